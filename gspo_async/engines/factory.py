"""Build the engine an actor's config asks for, from a model directory that may hold no weights.

An actor receives the architecture and tokenizer files from the learner's welcome and the weights by broadcast,
so the transformers engine is built from the config alone (random weights) with ``version = -1``: the actor loop
generates nothing until the first broadcast has been applied.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gspo_async.engines.base import Engine


def build_engine(cfg, model_dir: str | Path, seed: int) -> Engine:
    """The engine named by ``cfg.actor.engine`` (hf | vllm | simulated) over `model_dir`."""
    name = cfg.actor.engine
    if name == "vllm":
        from gspo_async.engines.vllm import VLLMEngine

        return VLLMEngine.from_config(cfg, model_dir, seed)
    if name == "simulated":
        from gspo_async.engines.simulated import SimulatedEngine, SimulationSettings

        # `actor.simulated` holds the length and cost model (SimulationSettings' fields); absent: the defaults.
        settings = SimulationSettings.from_mapping(getattr(cfg.actor, "simulated", None))
        engine = SimulatedEngine.from_model_dir(model_dir, settings, seed=seed)
        engine.version = -1  # like a fresh transformers engine: wait for the first broadcast
        return engine
    if name != "hf":
        raise ValueError(f"actor.engine={name!r} is not one of hf, vllm, simulated")
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from gspo_async.engines.hf import HFEngine

    model_dir = Path(model_dir)
    dtype = getattr(torch, cfg.model.dtype)
    if (model_dir / "model.safetensors").is_file() or any(model_dir.glob("*.safetensors")):
        engine = HFEngine(model_dir, device=cfg.actor.device, dtype=dtype, seed=seed)
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        engine = HFEngine((model, tokenizer), device=cfg.actor.device, dtype=dtype, seed=seed)
        engine.version = -1  # random weights: wait for the first broadcast
    return engine
