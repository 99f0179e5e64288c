"""Transformers inference engine: a batched sampling loop with a KV cache, for CPU (and small GPU) actors.

Each prompt is prefilled once, its KV cache is repeated for the n responses of its group, and decoding runs one
token per step for the whole batch; rows that sampled EOS leave the batch (their cache rows are dropped).
Prompts are left-padded: the attention mask hides the padding and position ids count real tokens only, so a
padded prompt gets the same logits as the prompt alone.

Log-probabilities. For every sampled token we report log softmax(logits / T)[token], the full, untruncated
softmax at the sampling temperature T: the same quantity the learner computes, so the importance ratio
pi_theta / mu compares like with like. With top-p or top-k truncation the token is actually drawn from the
truncated distribution renormalised over the kept set K, whose log-probability is
log softmax(logits / T)[token] - log(kept mass), kept mass = sum_{k in K} softmax(logits / T)[k]; so
reported = true behaviour logprob + log(kept mass), lower by -log(kept mass) >= 0 per token. The ratio then
stays consistent with the learner, but the data no longer come from the distribution that ratio assumes (tokens outside K are never sampled), which biases the off-policy correction.
So a training engine (the default) refuses top_p < 1 and top_k > 0; an engine built with ``evaluation=True``,
whose samples never train, accepts them. Greedy decoding (temperature 0) reports logprobs at temperature 1.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from gspo_async.engines.base import Engine, Generation, RateMeter, SamplingSettings, check_prompts


class HFEngine(Engine):
    """Sampling engine over a Hugging Face causal LM.

    model: a local directory / hub id, or an already loaded (model, tokenizer) pair (shared, not copied; moved to
        `device`, its dtype left as it is: `dtype` applies when loading from a path).
    seed: this engine's own seed; two engines with different seeds draw different samples.
    evaluation: True for an engine whose samples are only scored, never trained on: it accepts top_p / top_k
        truncation (a training engine refuses it; see the module docstring).
    stats_window_s: length of the window over which `stats()['tokens_per_s']` is measured.
    """

    def __init__(
        self,
        model: str | Path | tuple[Any, Any],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        stats_window_s: float = 30.0,
        evaluation: bool = False,
    ) -> None:
        if isinstance(model, (str, Path)):
            from gspo_async.models.loading import load_model_and_tokenizer

            self.model, self.tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device)
        elif isinstance(model, tuple) and len(model) == 2:
            self.model, self.tokenizer = model
            self.model.to(device)
        else:
            raise TypeError("model must be a path / hub id or a (model, tokenizer) pair")
        self.model.eval()
        self.device = torch.device(device)
        self.seed = int(seed)
        self.evaluation = bool(evaluation)
        self.version = 0
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.stop_ids = _stop_token_ids(self.model, self.tokenizer)
        if not self.stop_ids:
            raise ValueError(
                "the model and tokenizer define no EOS token: set tokenizer.eos_token or config.eos_token_id"
            )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else min(self.stop_ids)
        self._generator = torch.Generator(device=self.device)
        self._calls = 0
        self._rate = RateMeter(stats_window_s)

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> list[list[Generation]]:
        check_prompts(prompts, n, self.vocab_size)
        if not self.evaluation and sampling.temperature > 0 and (sampling.top_p < 1.0 or sampling.top_k > 0):
            raise ValueError(
                f"top_p={sampling.top_p}, top_k={sampling.top_k}: responses sampled from a truncated distribution "
                "are not from the behaviour policy whose full-softmax log-probs the learner's ratio uses; set "
                "sampling.top_p: 1.0 and sampling.top_k: 0 for training (truncation is for evaluation engines, "
                "HFEngine(..., evaluation=True))")
        t0 = time.monotonic()
        self._generator.manual_seed(_call_seed(self.seed, sampling.seed, self._calls))
        self._calls += 1
        rows = _sample(self.model, prompts, n, sampling, self.stop_ids, self.pad_id, self._generator, self.device)
        out: list[list[Generation]] = []
        for p in range(len(prompts)):
            group = []
            for tokens, logprobs, reason in rows[p * n : (p + 1) * n]:
                group.append(Generation(tokens, logprobs, reason, [(self.version, 0, len(tokens))]))
            out.append(group)
        self._record(sum(len(r[0]) for r in rows), time.monotonic() - t0)
        return out

    # -- weights ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def apply_weights(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Copy `tensors` into the model (names as in model.state_dict()) and set `version`.

        Every name must exist with the same shape, and every weight storage must be covered (tied weights need only
        one of their names, and agree when several are sent); nothing is copied unless all of that holds.
        """
        current = self.model.state_dict()
        unknown = sorted(set(tensors) - set(current))
        if unknown:
            raise ValueError(f"unknown weight names {unknown[:5]}: the sender's model differs from this engine's")
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(current[name].shape):
                raise ValueError(f"weight {name!r} has shape {tuple(t.shape)}, expected {tuple(current[name].shape)}")
        by_storage: dict[int, str] = {}  # tied weights (e.g. embeddings and lm_head) share one storage
        for name, t in tensors.items():
            first = by_storage.setdefault(current[name].data_ptr(), name)
            if first != name and not torch.equal(tensors[first], t):
                raise ValueError(f"tied weights {first!r} and {name!r} were sent with different values")
        missing = sorted(k for k, v in current.items() if v.data_ptr() not in by_storage)
        if missing:
            raise ValueError(f"weights {missing[:5]} are missing: apply_weights needs the full set of weights")
        for name in by_storage.values():
            current[name].copy_(tensors[name].to(device=current[name].device, dtype=current[name].dtype))
        self.version = int(version)

    def state_dict_for_check(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- stats --------------------------------------------------------------------------------------------------

    def _record(self, tokens: int, seconds: float) -> None:
        self._rate.record(tokens, seconds)

    def stats(self) -> dict[str, float]:
        """tokens_per_s over the last `stats_window_s` seconds (or since start), totals, and the loaded version."""
        return {**self._rate.snapshot(), "version": float(self.version)}

    def close(self) -> None:
        self.model = None  # drop the reference so the weights can be freed


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the tokenizer, the model config and the generation config (which may list several)."""
    ids: set[int] = set()
    sources = [getattr(tokenizer, "eos_token_id", None), getattr(model.config, "eos_token_id", None)]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        sources.append(getattr(gen_cfg, "eos_token_id", None))
    for s in sources:
        if isinstance(s, int):
            ids.add(s)
        elif isinstance(s, (list, tuple)):
            ids.update(int(x) for x in s)
    return ids


def _call_seed(engine_seed: int, sampling_seed: int, call: int) -> int:
    """A 63-bit seed from (engine seed, sampling seed, call number), stable across runs and platforms."""
    digest = hashlib.blake2b(f"{engine_seed}:{sampling_seed}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] token ids and 0/1 attention mask, prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _choose(
    logits: torch.Tensor, sampling: SamplingSettings, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of logits [B, V] (float32). Returns (tokens [B], full-softmax logprobs [B])."""
    if sampling.temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    scaled = logits / sampling.temperature
    logp = torch.log_softmax(scaled, dim=-1)
    kept = scaled
    if sampling.top_k > 0 and sampling.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k, dim=-1).values[:, -1:]
        kept = kept.masked_fill(kept < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(kept, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens; the top token always stays
        drop_sorted = mass_before >= sampling.top_p
        kept = kept.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logp.exp() if kept is scaled else torch.softmax(kept, dim=-1)
    tokens = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


def _sample(
    model: Any,
    prompts: list[list[int]],
    n: int,
    sampling: SamplingSettings,
    stop_ids: set[int],
    pad_id: int,
    gen: torch.Generator,
    device: torch.device,
) -> list[tuple[list[int], list[float], str]]:
    """Decode n responses per prompt. Returns (tokens, logprobs, finish_reason) per row, row = prompt * n + j."""
    ids, mask = _left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1].float()
    if n > 1:  # prefill once per prompt, then copy the cache for each response of the group
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        positions = positions.repeat_interleave(n, dim=0)
    next_pos = positions[:, -1] + 1
    rows = [([], [], "length") for _ in range(len(prompts) * n)]
    live = torch.arange(len(rows), device=device)  # which original row each batch row is
    stop = torch.tensor(sorted(stop_ids), device=device)
    for step in range(sampling.max_new_tokens):
        tokens, logprobs = _choose(logits, sampling, gen)
        finished = torch.isin(tokens, stop)
        for r, t, lp, f in zip(live.tolist(), tokens.tolist(), logprobs.tolist(), finished.tolist()):
            rows[r][0].append(t)
            rows[r][1].append(lp)
            if f:
                rows[r] = (rows[r][0], rows[r][1], "stop")
        if step == sampling.max_new_tokens - 1:
            break
        if finished.any():
            keep = (~finished).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            live, tokens, mask, next_pos = live[keep], tokens[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return rows


@torch.no_grad()
def sequence_logprobs(
    model: Any, prompt_tokens: list[int], response_tokens: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities [len(response_tokens)] of a response given its prompt: one plain forward pass,
    log_softmax(logits / T), gathered at the response tokens (T = 1 when temperature is 0, as for greedy)."""
    if not prompt_tokens or not response_tokens:
        raise ValueError("sequence_logprobs needs a non-empty prompt and response")
    t = 1.0 if temperature == 0.0 else temperature
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_tokens) + list(response_tokens)], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_tokens) - 1 : -1].float()
    logp = torch.log_softmax(logits / t, dim=-1)
    return logp.gather(-1, ids[0, len(prompt_tokens) :, None])[:, 0]
