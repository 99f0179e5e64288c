"""The tiny local model's architecture: a small standard Llama config, built locally with no hub access.

Building, warming up and saving the model (which needs an engine and a task) is `gspo_async.bootstrap.tiny`.
"""

from __future__ import annotations

from typing import Any

def tiny_config(vocab_size: int, hidden_size: int, layers: int, heads: int, max_positions: int) -> Any:
    """A small standard Llama config (also loadable by vLLM): head_dim = hidden_size / heads, tied embeddings."""
    from transformers import LlamaConfig

    if hidden_size % heads or (hidden_size // heads) % 8:
        raise ValueError(f"hidden_size={hidden_size} / heads={heads} must give a head_dim that is a multiple of 8")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )

