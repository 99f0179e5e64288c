"""Load a causal LM and its tokenizer, from a local directory (never touching the hub) or a hub id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _is_dropout_name(name: str) -> bool:
    """Config keys and module attributes that hold a dropout probability (attention_dropout, hidden_dropout,
    resid_pdrop, classifier_dropout, ...)."""
    return "dropout" in name or name.endswith("pdrop")


def disable_dropout(model: torch.nn.Module) -> list[str]:
    """Set every dropout probability of `model` to 0, in place; returns what was non-zero (for the log).

    The learner's passes without gradients (proximal, reference log-probs) run in eval mode and the training
    passes in train mode (gradient checkpointing needs it); dropout in the latter would make the on-policy ratio
    differ from 1. ``nn.Dropout`` modules are only half of it: attention implementations read a float attribute
    (Llama's ``self.attention_dropout``) and apply it when ``self.training``, so those attributes and the
    config's keys (what a saved checkpoint carries) are zeroed too.
    """
    changed: list[str] = []
    config = getattr(model, "config", None)
    for cfg in [config, *(getattr(config, k) for k in ("text_config",) if config is not None and hasattr(config, k))]:
        if cfg is None:
            continue
        for key, value in list(vars(cfg).items()):
            if _is_dropout_name(key) and isinstance(value, float) and value != 0.0:
                setattr(cfg, key, 0.0)
                changed.append(f"config.{key}={value:g}")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p != 0.0:
            changed.append(f"{name or 'model'}.p={module.p:g}")
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if _is_dropout_name(key) and isinstance(value, float) and value != 0.0:
                setattr(module, key, 0.0)
                changed.append(f"{name or 'model'}.{key}={value:g}")
    if changed:
        log.info("dropout disabled (%d settings were non-zero, e.g. %s)", len(changed), ", ".join(changed[:3]))
    return changed


def load_model_and_tokenizer(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """(model, tokenizer) for `path`. The model is in eval mode on `device` with parameters of `dtype`, and its
    dropout disabled (:func:`disable_dropout`: RL log-probs must not depend on train/eval mode).

    A local directory loads its tokenizer with `PreTrainedTokenizerFast` (AutoTokenizer may swap in a
    model-specific class that re-tokenises differently, e.g. for qwen2 configs); a hub id uses AutoTokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"{local} has no config.json: point model.path at a Hugging Face model directory")
        if not (local / "tokenizer.json").is_file():
            raise ValueError(f"{local} has no tokenizer.json: save a fast tokenizer next to the model")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(local))
        model = AutoModelForCausalLM.from_pretrained(str(local), dtype=dtype)
    else:
        if str(path).startswith((".", "/", "~")):
            raise ValueError(f"model directory {path} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(device)
    model.eval()
    disable_dropout(model)
    return model, tokenizer
