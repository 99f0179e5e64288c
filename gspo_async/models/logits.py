"""What each architecture does to its logits after the output projection, for the learner's chunked log-probs.

The learner's chunked path (``model.logprob_path: chunked``) never calls the model's own ``forward`` past the base
transformer: it multiplies the last hidden states by the output embedding itself. That is only right when it
applies the same transform as the architecture's ``...ForCausalLM.forward``. The tables below list the
architectures whose forward was read and is reproduced (transformers 4.5x-5.x); any other is refused by name,
with ``model.logprob_path: model`` (the model's own forward, full logits) as the way to train it.
"""

from __future__ import annotations

from typing import Any

from gspo_async.algo.logprobs import IDENTITY, LogitTransform

# ``logits = lm_head(hidden)`` and nothing else.
PLAIN = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma",
                   "olmo", "olmo2", "starcoder2", "deepseek_v3"})
# ``cap * tanh(logits / cap)`` with cap = config.final_logit_softcapping (None: plain).
SOFTCAP = frozenset({"gemma2", "gemma3_text"})
# ``logits / config.logits_scaling``.
DIVIDE_BY_LOGITS_SCALING = frozenset({"granite", "granitemoe"})
# ``logits * config.logit_scale``.
TIMES_LOGIT_SCALE = frozenset({"cohere", "cohere2"})

KNOWN = PLAIN | SOFTCAP | DIVIDE_BY_LOGITS_SCALING | TIMES_LOGIT_SCALE


def logit_transform(config: Any) -> LogitTransform:
    """The :class:`LogitTransform` of a Hugging Face model config; ValueError naming the architecture when the
    chunked path does not know how that architecture processes its logits."""
    model_type = getattr(config, "model_type", None)
    if model_type in PLAIN:
        return IDENTITY
    if model_type in SOFTCAP:
        cap = getattr(config, "final_logit_softcapping", None)
        return LogitTransform(softcap=float(cap)) if cap is not None else IDENTITY
    if model_type in DIVIDE_BY_LOGITS_SCALING:
        return LogitTransform(scale=1.0 / float(config.logits_scaling))
    if model_type in TIMES_LOGIT_SCALE:
        return LogitTransform(scale=float(config.logit_scale))
    raise ValueError(
        f"model type {model_type!r} ({', '.join(getattr(config, 'architectures', None) or ['no architectures'])}): "
        "the learner's chunked log-prob path does not know whether this architecture transforms its logits after "
        f"the output projection (it reproduces: {', '.join(sorted(KNOWN))}). Set model.logprob_path: model to "
        "compute log-probs through the model's own forward (full [tokens x vocab] logits, more memory)")
