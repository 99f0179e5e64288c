"""Token log-probabilities from the last hidden states, chunked over tokens.

The naive path builds the [tokens x vocab] logits and their float32 log-softmax at once (and autograd keeps
them for backward): 1024 tokens x 152k vocab is 0.6 GB per copy. `token_logprobs_from_hidden` projects and
normalises `chunk_size` rows at a time, keeps only the per-row log-normaliser, and recomputes each chunk's
logits in backward, so peak memory is a few [chunk_size x vocab] buffers in both passes.

Both functions divide the logits by `temperature`: the learner must score tokens at the sampling temperature
for its ratios against the actor's logprobs to mean anything. Before that they apply the architecture's own logit
transform (:class:`LogitTransform`: a scale such as Granite's 1 / logits_scaling or Cohere's logit_scale, then
Gemma-2's softcapping cap * tanh(z / cap)), so the log-probs are those of the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32, or float64 when an input is float64 (gradient checks)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to ``hidden @ W.T + b`` before its logits: multiply by `scale`, then, when `softcap` is
    set, ``softcap * tanh(z / softcap)``. The identity by default."""

    scale: float = 1.0
    softcap: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"LogitTransform.scale must be > 0, got {self.scale}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"LogitTransform.softcap must be > 0 or None, got {self.softcap}")


IDENTITY = LogitTransform()


def _scaled_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, dtype,
                   transform: LogitTransform = IDENTITY) -> tuple[Tensor, Tensor | None]:
    """(logits / temperature after the transform, d logits / d raw logits of the softcap or None) [rows x V]."""
    logits = F.linear(hidden.to(dtype), weight, bias)
    if transform.scale != 1.0:
        logits.mul_(transform.scale)
    slope = None
    if transform.softcap is not None:
        logits = torch.tanh(logits.div_(transform.softcap))
        slope = 1.0 - logits * logits  # d tanh(u)/du; times cap / cap: d(cap tanh(z / cap))/dz
        logits.mul_(transform.softcap)
    return (logits.div_(temperature) if temperature != 1.0 else logits), slope


class _ChunkedLogprobs(torch.autograd.Function):
    """logprobs [N] (and entropy [N]) of `labels` under softmax((hidden @ weight.T + bias) / temperature)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, compute_entropy, transform):
        dtype = _compute_dtype(hidden, weight, bias)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        n = hidden.shape[0]
        logprobs = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty_like(logprobs)
        entropy = torch.zeros(n if compute_entropy else 0, dtype=dtype, device=hidden.device)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            z = _scaled_logits(hidden[rows], w, b, temperature, dtype, transform)[0]
            lse[rows] = torch.logsumexp(z, dim=-1)
            logprobs[rows] = z.gather(1, labels[rows, None]).squeeze(1) - lse[rows]
            if compute_entropy:
                logp = z.sub_(lse[rows, None])
                entropy[rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.temperature, ctx.chunk_size, ctx.compute_entropy = temperature, chunk_size, compute_entropy
        ctx.transform = transform
        if not compute_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = lse.dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros_like(b) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, min(start + ctx.chunk_size, hidden.shape[0]))
            h = hidden[rows].to(dtype)
            z, slope = _scaled_logits(h, w, b, ctx.temperature, dtype, ctx.transform)
            logp = z.sub_(lse[rows, None])
            p = logp.exp()
            g_lp = grad_logprobs[rows, None].to(dtype)
            # d logp_label / dz = onehot(label) - p
            grad_z = p * -g_lp
            grad_z.scatter_add_(1, labels[rows, None], g_lp)
            if ctx.compute_entropy:
                # dH/dz = -p * (log p + H)
                grad_z.sub_(logp.add_(entropy[rows, None]).mul_(p).mul_(grad_entropy[rows, None].to(dtype)))
            if ctx.temperature != 1.0:
                grad_z.div_(ctx.temperature)
            if slope is not None:  # back through the softcap, then the scale, to the raw logits
                grad_z.mul_(slope)
            if ctx.transform.scale != 1.0:
                grad_z.mul_(ctx.transform.scale)
            if need_h:
                grad_h[rows] = (grad_z @ w).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(grad_z.T, h)
            if need_b:
                grad_b.add_(grad_z.sum(0))
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _check(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, temperature: float) -> None:
    if hidden.dim() not in (2, 3) or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, H] or [B, T, H] and lm_head_weight [V, H]; got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels must be {tuple(hidden.shape[:-1])} (hidden without H), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be integer token ids (int64), got {labels.dtype}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = {tuple(weight.shape[:1])}, got {tuple(bias.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(
            f"labels must lie in [0, {weight.shape[0]}) (the vocabulary); got range "
            f"[{int(labels.min())}, {int(labels.max())}]. Replace padding/ignore ids (e.g. -100) with a valid id "
            "and mask those positions instead"
        )


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_entropy: bool = False,
    transform: LogitTransform = IDENTITY,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(transform(hidden @ W.T + bias) / temperature)[label] per token, and optionally its entropy.

    hidden [N, H] or [B, T, H] (any float dtype), lm_head_weight [V, H], labels [N] or [B, T] token ids.
    Returns logprobs in nats with the shape of `labels`, float32 (float64 for float64 inputs), differentiable
    with respect to hidden, the weight and the bias; entropy (same shape, differentiable) or None. Only
    `chunk_size` rows of the [N x V] logits exist at any time, in forward and in backward.
    """
    _check(hidden, lm_head_weight, labels, bias, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).long()
    logprobs, entropy = _ChunkedLogprobs.apply(
        flat_hidden, lm_head_weight, bias, flat_labels, float(temperature), int(chunk_size), compute_entropy,
        transform,
    )
    return logprobs.reshape(labels.shape), entropy.reshape(labels.shape) if compute_entropy else None


def naive_token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    transform: LogitTransform = IDENTITY,
) -> tuple[Tensor, Tensor | None]:
    """The same as `token_logprobs_from_hidden`, materialising the full [N x V] log-softmax (reference)."""
    _check(hidden, lm_head_weight, labels, bias, temperature)
    dtype = _compute_dtype(hidden, lm_head_weight, bias)
    logits = F.linear(hidden.to(dtype), lm_head_weight.to(dtype), None if bias is None else bias.to(dtype))
    logits = logits * transform.scale
    if transform.softcap is not None:
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
    logp = (logits / temperature).log_softmax(dim=-1)
    logprobs = logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
    return logprobs, entropy
