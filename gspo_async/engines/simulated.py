"""Simulated generation: valid random responses whose lengths and generation time follow a configured model.

Used to benchmark the pipeline (learner, coordinator, transport, weight sync) at a scale or a cost profile the
machine cannot generate for real: each response's length is drawn from a long-tailed lognormal distribution,
its tokens uniformly from the ordinary (non-special) vocabulary, and the call sleeps for as long as a batched
engine would decode. The sleep frees the core, as generation on a separate GPU would. Everything an actor
sends stays valid, so the learner trains on these rollouts for real (real forward and backward passes, real
weight broadcasts); the rollouts carry no learning signal and rewards on random text are almost always 0.

Cost model of one ``generate`` call (a batched engine decodes every row in lock step until the longest ends):

    seconds = prefill_s + step_s * max_length + token_s * total_tokens

prefill_s: once per call. step_s: the fixed cost of one decode step of the batch. token_s: the extra cost per
live row per step, so ``total_tokens = sum of response lengths``. Calibrate them from a real engine
(``tools/bench/pipeline.py`` measures the tiny model).

Log-probabilities: every token, EOS included, reports log(1 / K) with K the number of ordinary tokens, the
log-probability of a uniform draw: finite and <= 0 as the protocol requires, unrelated to the learner's policy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from gspo_async.engines.base import Engine, Generation, RateMeter, SamplingSettings, check_prompts


@dataclass
class SimulationSettings:
    """Length and cost model of simulated generation (lengths in tokens, costs in seconds).

    length_median: median natural response length, EOS included (the lognormal's exp(mu)).
    length_sigma: standard deviation of the log length (0: every response is `length_median` tokens long).
        Responses whose natural length exceeds `max_new_tokens` are cut there (finish_reason 'length').
    prefill_s, step_s, token_s: the cost model of the module docstring; all 0 means no sleep at all.
    """

    length_median: float = 32.0
    length_sigma: float = 1.0
    prefill_s: float = 0.0
    step_s: float = 0.0
    token_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.length_median) and self.length_median >= 1):
            raise ValueError(f"length_median={self.length_median} must be a finite number of tokens >= 1")
        if not (math.isfinite(self.length_sigma) and self.length_sigma >= 0):
            raise ValueError(f"length_sigma={self.length_sigma} must be >= 0 (0 = every response the same length)")
        for name in ("prefill_s", "step_s", "token_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} must be a finite number of seconds >= 0")

    def seconds(self, lengths: list[int]) -> float:
        """Simulated wall time of one generate call whose responses have `lengths` tokens."""
        if not lengths:
            return 0.0
        return self.prefill_s + self.step_s * max(lengths) + self.token_s * sum(lengths)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Any) -> "SimulationSettings":
        """From a dict or an object with these attribute names (e.g. a config section); missing keys default."""
        if values is None:
            return cls()
        if not isinstance(values, dict):
            values = {k: getattr(values, k) for k in cls.__dataclass_fields__ if hasattr(values, k)}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown simulation settings {unknown}; valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**{k: float(v) for k, v in values.items()})


class SimulatedEngine(Engine):
    """An engine that sleeps instead of computing and returns valid random responses.

    Of the sampling settings only max_new_tokens and seed matter (temperature, top_p, top_k shape no draw).

    vocab_size: token ids are < vocab_size. eos_id: ends a response that stops before `max_new_tokens`.
    special_ids: ids never drawn as content (pad, bos, unk, ...; eos is excluded anyway).
    tokenizer: kept for the actor, which decodes responses to score them (may be None).
    sleep: False skips the sleep but still reports the simulated time in stats (for tests and dry runs).
    clock, sleeper: the monotonic clock (seconds) and the sleep function; tests inject a fake pair.
    """

    def __init__(self, vocab_size: int, eos_id: int, settings: Optional[SimulationSettings] = None, *,
                 special_ids: tuple[int, ...] = (), tokenizer: Any = None, seed: int = 0, sleep: bool = True,
                 stats_window_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 sleeper: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size!r} must be an int >= 2")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id={eos_id} must lie in 0..{vocab_size - 1}")
        excluded = {int(eos_id), *(int(i) for i in special_ids)}
        self.content_ids = np.array([i for i in range(vocab_size) if i not in excluded], dtype=np.int64)
        if len(self.content_ids) == 0:
            raise ValueError("every token id is special: the simulated engine needs ordinary tokens to draw")
        self.vocab_size = vocab_size
        self.eos_id = int(eos_id)
        self.settings = settings or SimulationSettings()
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.sleep = sleep
        self._clock = clock
        self._sleeper = sleeper
        self.version = 0
        self.token_logprob = -math.log(len(self.content_ids))
        self._weights: dict[str, torch.Tensor] = {}
        self._calls = 0
        self._rate = RateMeter(stats_window_s)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, settings: Optional[SimulationSettings] = None,
                       seed: int = 0, sleep: bool = True) -> "SimulatedEngine":
        """Vocabulary, EOS and special tokens from a Hugging Face model directory (config.json + tokenizer)."""
        from transformers import PreTrainedTokenizerFast

        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{model_dir} has no config.json: pass a Hugging Face model directory")
        config = json.loads(config_path.read_text())
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0]
        if eos is None:
            raise ValueError(f"{model_dir}: neither the tokenizer nor config.json defines an EOS token")
        vocab = int(config.get("vocab_size") or len(tokenizer))
        return cls(vocab, int(eos), settings, special_ids=tuple(tokenizer.all_special_ids), tokenizer=tokenizer,
                   seed=seed, sleep=sleep)

    # -- generation ---------------------------------------------------------------------------------------------

    def sample_lengths(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Natural lengths (EOS included) of `count` responses, [count] int64, not yet cut at max_new_tokens."""
        s = self.settings
        raw = rng.lognormal(math.log(s.length_median), s.length_sigma, size=count) if s.length_sigma > 0 \
            else np.full(count, s.length_median)
        return np.maximum(np.rint(raw), 1).astype(np.int64)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> list[list[Generation]]:
        check_prompts(prompts, n, self.vocab_size)
        start = self._clock()
        # numpy's SeedSequence mixes (engine seed, call seed, call number): repeatable and distinct per call.
        rng = np.random.default_rng([self.seed, int(sampling.seed), self._calls])
        self._calls += 1
        natural = self.sample_lengths(len(prompts) * n, rng)
        out: list[list[Generation]] = []
        lengths: list[int] = []
        for p in range(len(prompts)):
            group = []
            for j in range(n):
                length = int(natural[p * n + j])
                stops = length <= sampling.max_new_tokens
                length = min(length, sampling.max_new_tokens)
                tokens = rng.choice(self.content_ids, size=length).tolist()
                if stops:
                    tokens[-1] = self.eos_id
                group.append(Generation(tokens, [self.token_logprob] * length, "stop" if stops else "length",
                                        [(self.version, 0, length)]))
                lengths.append(length)
            out.append(group)
        simulated_s = self.settings.seconds(lengths)
        if self.sleep:
            remaining = simulated_s - (self._clock() - start)  # drawing the tokens counts toward the cost
            if remaining > 0:
                self._sleeper(remaining)
        self._record(sum(lengths), simulated_s if not self.sleep else self._clock() - start)
        return out

    # -- weights ------------------------------------------------------------------------------------------------

    def apply_weights(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Keep a reference to `tensors` (for `state_dict_for_check`) and set `version`; nothing is computed."""
        if not isinstance(tensors, dict) or not tensors:
            raise ValueError("apply_weights needs a non-empty dict of named tensors")
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"weights {bad[:5]} are not tensors")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        self._weights = dict(tensors)
        self.version = version

    def state_dict_for_check(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._weights.items()}

    # -- stats --------------------------------------------------------------------------------------------------

    def _record(self, tokens: int, seconds: float) -> None:
        self._rate.record(tokens, seconds)

    def stats(self) -> dict[str, float]:
        """tokens_per_s over the last `stats_window_s` seconds (or since start), totals, and the loaded version."""
        return {**self._rate.snapshot(), "version": float(self.version)}
