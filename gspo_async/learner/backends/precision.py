"""The learner's numeric precision: which dtype holds the weights, which one computes, what the actors receive.

``model.dtype`` is the dtype the model *computes* in. ``learner.precision`` says how the learner trains it:

- ``mixed`` (default): the weights the optimiser updates (master weights) and AdamW's moments are float32; every
  forward and backward runs under ``torch.autocast(model.dtype)``, so matrix products run in bf16/fp16 while
  reductions and normalisations stay in fp32. float16 adds a gradient scaler (dynamic loss scaling; a step whose
  gradients overflow is skipped and counted). The weights go to the actors cast to the actors' dtype.
- ``pure``: weights and optimiser state in ``model.dtype`` itself. bfloat16 keeps 8 significant bits: a weight w
  moves only when the update exceeds half its spacing, |w| * 2^-8; an Adam step of about lr = 1e-6 on a weight of
  0.02 is ~1/80 of that, so the policy stays frozen. Kept only to measure that (``tools/bench/precision.py``).

With ``model.dtype: float32`` both are plain fp32 training.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

_VLLM_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16,
                "float32": torch.float32, "float": torch.float32}


def compute_dtype(cfg) -> torch.dtype:
    """The dtype forward and backward compute in (``model.dtype``)."""
    return getattr(torch, cfg.model.dtype)


def master_dtype(cfg) -> torch.dtype:
    """The dtype the learner loads, holds and updates the weights in: float32 unless ``learner.precision: pure``."""
    return compute_dtype(cfg) if cfg.learner.precision == "pure" else torch.float32


def autocast_dtype(cfg) -> torch.dtype | None:
    """The autocast dtype of the learner's passes, or None when they run in the weights' own dtype."""
    if cfg.learner.precision == "pure" or cfg.model.dtype == "float32":
        return None
    return compute_dtype(cfg)


def actor_dtype(cfg) -> torch.dtype:
    """The dtype the actors hold weights in, which the broadcast casts to (halves the bytes of a bf16 fleet).

    vLLM actors use ``actor.vllm.dtype`` (``auto``: the model's, taken to be ``model.dtype``); the others
    ``model.dtype``."""
    if cfg.actor.engine == "vllm":
        name = str(cfg.actor.vllm.dtype)
        if name == "auto":
            return compute_dtype(cfg)
        if name not in _VLLM_DTYPES:
            raise ValueError(f"actor.vllm.dtype={name!r} is not one of {sorted(_VLLM_DTYPES)} or auto")
        return _VLLM_DTYPES[name]
    return compute_dtype(cfg)


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` on `device`'s type with `dtype`, or a no-op context when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_master_weights(model: torch.nn.Module, cfg) -> None:
    """Refuse to train trainable parameters that are not in the master dtype: under ``mixed`` that would be pure
    bf16/fp16 training without master weights, whose small updates are silently lost."""
    want = master_dtype(cfg)
    wrong = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad
                    and p.dtype != want})
    if not wrong:
        return
    if cfg.learner.precision == "mixed":
        raise ValueError(
            f"the policy's trainable parameters are {', '.join(wrong)}, but learner.precision: mixed trains fp32 "
            "master weights: load the model in float32 (model.dtype is the compute dtype, applied by autocast). "
            f"Training {', '.join(wrong)} weights directly loses every update below half an ulp (at lr "
            f"{cfg.optim.lr:g} most weights would never change); set learner.precision: pure only to measure that")
    raise ValueError(f"learner.precision: pure expects {str(want).removeprefix('torch.')} parameters "
                     f"(model.dtype), found {', '.join(wrong)}")
