"""Load a causal LM and its tokenizer, from a local directory (never touching the hub) or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_model_and_tokenizer(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """(model, tokenizer) for `path`. The model is in eval mode on `device` with parameters of `dtype`.

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
    return model, tokenizer
