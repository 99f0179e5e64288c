"""Inference engines behind one interface (`Engine`): transformers (`hf`) here, vLLM alongside."""

from gspo_async.engines.base import Engine, Generation, SamplingSettings

__all__ = ["Engine", "Generation", "SamplingSettings"]
