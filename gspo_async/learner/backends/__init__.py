"""Learner backends (config key `learner.engine`): how the model is held, stepped and gathered for broadcast.

`torch` (plain PyTorch on one device) is the default and all a CPU needs; `deepspeed` spans several ranks with
ZeRO. Both expose the same small interface (:class:`gspo_async.learner.backends.base.LearnerBackend`).
"""

from gspo_async.learner.backends.base import LearnerBackend


def build_backend(cfg, model) -> LearnerBackend:
    """Build the engine named by ``cfg.learner.engine`` around `model`."""
    if cfg.learner.engine == "deepspeed":
        from gspo_async.learner.backends.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(cfg, model)
    from gspo_async.learner.backends.torch_backend import TorchBackend

    return TorchBackend(cfg, model)
