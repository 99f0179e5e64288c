"""The interface every inference engine implements (transformers on CPU/GPU, vLLM on GPU).

An engine turns prompt token ids into groups of sampled responses, each with the log-probability of every sampled
token and the weight versions that produced it, and swaps in new weights between generate calls.
"""

from __future__ import annotations

import abc
import collections
import time
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingSettings:
    """How to sample. temperature 0 means greedy decoding (logprobs are then reported at temperature 1).

    top_k 0 and top_p 1.0 disable truncation (recommended for training: see `gspo_async.engines.hf`).
    seed: combined with the engine's own seed and a per-call counter, so a fresh engine built with the same seeds
    repeats its samples exactly while different engines, and successive calls, draw different ones.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]; use 1.0 to disable nucleus truncation")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0; use 0 to disable top-k truncation")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")


@dataclass
class Generation:
    """One sampled response.

    tokens: response token ids (the EOS token included when finish_reason is 'stop').
    logprobs: log-probability (natural log) of each sampled token under the full softmax of logits / temperature,
        one per token.
    finish_reason: 'stop' (EOS sampled), 'length' (max_new_tokens reached) or 'abort'.
    version_spans: (weight_version, start, end) over response token indexes, end exclusive, covering all tokens.
    """

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    version_spans: list[tuple[int, int, int]] = field(default_factory=list)


class Engine(abc.ABC):
    """Generates groups of responses and accepts new weights at safe points."""

    version: int  # weight version currently loaded

    @abc.abstractmethod
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> list[list[Generation]]:
        """Sample `n` responses for each prompt (token ids). Result[i][j] is response j of prompt i."""

    @abc.abstractmethod
    def apply_weights(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Replace the weights (between generate calls) and set `version`; all tensors or none are applied."""

    @abc.abstractmethod
    def state_dict_for_check(self) -> dict[str, torch.Tensor]:
        """The current weights, by parameter name (for checksum tests)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, float]:
        """At least tokens_per_s (generated tokens per second over a recent window) and tokens_total."""

    def close(self) -> None:
        """Release memory and devices. Default: nothing to release."""


def check_prompts(prompts: list[list[int]], n: int, vocab_size: int | None) -> None:
    """Refuse a generate request no engine can serve: n < 1, no prompts, an empty prompt, or (when `vocab_size` is
    known) a token id outside 0..vocab_size-1. The one check every engine runs before it generates."""
    if n < 1:
        raise ValueError(f"n={n} responses per prompt must be at least 1")
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
        if vocab_size is not None:
            bad = [t for t in p if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary 0..{vocab_size - 1}")


class RateMeter:
    """Generated tokens per second over a sliding window, plus totals: every engine's `stats()` core."""

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self.tokens_total = 0
        self.generate_s_total = 0.0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (end time, tokens) per call
        self._started = time.monotonic()

    def record(self, tokens: int, seconds: float) -> None:
        """One generate call produced `tokens` tokens in `seconds`."""
        now = time.monotonic()
        self.tokens_total += tokens
        self.generate_s_total += seconds
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def snapshot(self) -> dict[str, float]:
        """tokens_per_s (tokens in the last window, or since start, per wall second), tokens_total, generate_s_total."""
        now = time.monotonic()
        window = min(self.window_s, max(now - self._started, 1e-9))
        recent = sum(tok for t, tok in self._recent if t >= now - window)
        return {"tokens_per_s": recent / window, "tokens_total": float(self.tokens_total),
                "generate_s_total": self.generate_s_total}
