"""Learner engines: how the model is held, stepped and gathered for broadcast.

`torch` (plain PyTorch on one device) is the default and all a CPU needs; `deepspeed` spans several ranks with
ZeRO. Both expose the same small interface (:class:`gspo_async.learner.engines.base.LearnerEngine`).
"""

from gspo_async.learner.engines.base import LearnerEngine


def build_engine(cfg, model) -> LearnerEngine:
    """Build the engine named by ``cfg.learner.engine`` around `model`."""
    if cfg.learner.engine == "deepspeed":
        from gspo_async.learner.engines.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, model)
    from gspo_async.learner.engines.torch_engine import TorchEngine

    return TorchEngine(cfg, model)
