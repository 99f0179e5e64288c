"""Policy loss: GSPO sequence ratio (or token ratio), asymmetric and dual clipping, k3 KL, loss aggregation.

Shapes: B sequences, T response positions; every [B, T] tensor is paired with a mask m (bool or 0/1).
Masked positions never reach the loss or the gradient, whatever they hold (NaN and inf included): inputs
are replaced with zeros there by `torch.where` before any arithmetic, never multiplied by the mask.

Metrics are computed per call. When a mini-batch is split into micro-batches, combine them with weights:
token metrics (clipfrac, approx_kl, token-mode ratio_*) by `tokens`, sequence metrics (clipfrac_seq,
seq-mode ratio_mean, is_weight_mean) by `seqs`; *_max by max; pg_loss and kl_loss by sum when the caller
passed the mini-batch totals num_tokens / num_seqs (each call is then already a share of the whole).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gspo_async.algo.modes import IMPORTANCE_SAMPLING, LOSS_AGG_MODES


def _count(value: float | Tensor | None, local: Tensor) -> Tensor:
    """The denominator to use: the caller's global count, else the local one; at least 1 (empty batch -> 0 loss)."""
    if value is None:
        return local.clamp(min=1)
    return torch.as_tensor(value, dtype=local.dtype, device=local.device).clamp(min=1)


def aggregate(
    loss: Tensor,
    mask: Tensor,
    loss_agg_mode: str,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar. With n_i = sum_t m_it:

      token-mean               sum_it m L / N_tok
      seq-mean-token-sum       sum_i (sum_t m L) / N_seq
      seq-mean-token-mean      sum_i (sum_t m L / n_i) / N_seq        (GSPO's choice)
      seq-mean-token-sum-norm  sum_it m L / T,  T = norm_length, a fixed budget such as response_length;
                               no division by the number of sequences (ROLL and the Dr. GRPO form).

    N_tok and N_seq default to this call's counts. When a mini-batch is split into micro-batches, pass the
    mini-batch totals (num_tokens = valid tokens, num_seqs = sequences with >= 1 valid token, summed over
    micro-batches and data-parallel ranks): the micro-batch results then sum to the whole-batch value.
    Empty sequences (n_i = 0) contribute 0 and are not counted in N_seq. A batch with no valid token gives 0.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r} is not one of {LOSS_AGG_MODES}")
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss and mask must both be [B, T]; got {tuple(loss.shape)} and {tuple(mask.shape)}")
    m = mask.bool()
    masked = torch.where(m, loss, 0.0)
    n_i = m.sum(dim=-1).to(masked.dtype)
    if loss_agg_mode == "token-mean":
        return masked.sum() / _count(num_tokens, n_i.sum())
    if loss_agg_mode == "seq-mean-token-sum":
        return masked.sum() / _count(num_seqs, (n_i > 0).sum().to(masked.dtype))
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=-1) / n_i.clamp(min=1)
        return per_seq.sum() / _count(num_seqs, (n_i > 0).sum().to(masked.dtype))
    if norm_length is None or norm_length <= 0:
        raise ValueError(
            "loss_agg_mode='seq-mean-token-sum-norm' needs norm_length > 0, the fixed length budget "
            "(e.g. response_length), so that the loss does not depend on micro-batch padding"
        )
    return masked.sum() / norm_length


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimate of KL(pi_theta || pi_ref) per token: exp(d) - d - 1, d = log pi_ref - log pi_theta.

    d is clamped to [-20, 20] so exp cannot overflow (and backward cannot meet inf * 0), and the estimate is
    clamped to at most 10 like ROLL (k3 >= 0 always).
    """
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(max=10.0)


def _check_shapes(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> None:
    if logprobs.dim() != 2 or logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            "logprobs, old_logprobs and mask must share one [B, T] shape; got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(logprobs.shape)}; got {tuple(advantages.shape)}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    importance_sampling: str = "seq",
    pg_clip_low: float = 3e-4,
    pg_clip_high: float = 4e-4,
    dual_clip_loss: bool = False,
    dual_clip_c: float = 3.0,
    loss_agg_mode: str = "seq-mean-token-mean",
    is_weight: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    use_kl_loss: bool = False,
    kl_loss_coef: float = 0.0,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_length: int | None = None,
    log_ratio_clamp: float = 10.0,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy-gradient loss; returns (scalar loss to minimise, metrics of this call).

    logprobs [B, T] (log pi_theta, differentiable), old_logprobs [B, T] (log pi_old, detached here),
    advantages [B] or [B, T], mask [B, T]. With delta = log pi_theta - log pi_old:
      'seq' (GSPO):   log s_i = sum_t m delta / max(1, n_i); in the GSPO-token form
                      log s_it = log pi_theta_it - sg(log pi_theta_it) + sg(log s_i): its value is s_i and its
                      gradient s_i * grad log pi_theta_it, GSPO's own when A is constant in a sequence.
      'token' (PPO):  r_it = exp(delta_it).
    The log ratio is clamped at `log_ratio_clamp` before exp (no inf; gradient 0 beyond it). Then
      L = max(-A r, -A clip(r, 1 - pg_clip_low, 1 + pg_clip_high)),
      dual clip (A < 0 only): L = min(L, c |A|) with c = dual_clip_c > 1,
      L *= is_weight_i (detached per-sequence weight, e.g. the decoupled staleness correction),
      loss = agg(L) + kl_loss_coef * agg(k3(theta, ref)) when use_kl_loss, agg = `aggregate(loss_agg_mode)`.
    """
    _check_shapes(logprobs, old_logprobs, advantages, mask)
    if importance_sampling not in IMPORTANCE_SAMPLING:
        raise ValueError(f"importance_sampling={importance_sampling!r} is not one of {IMPORTANCE_SAMPLING}")
    if pg_clip_low < 0 or pg_clip_high < 0 or pg_clip_low >= 1:
        raise ValueError(f"need 0 <= pg_clip_low < 1 and pg_clip_high >= 0; got {pg_clip_low}, {pg_clip_high}")
    if dual_clip_loss and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1 (the loss cap c*|A| for A < 0), got {dual_clip_c}")
    if use_kl_loss and ref_logprobs is None:
        raise ValueError("use_kl_loss needs ref_logprobs [B, T] from the frozen reference model")

    m = mask.bool()
    seq_valid = m.any(dim=-1)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    lp = torch.where(m, logprobs, zero)
    old = torch.where(m, old_logprobs.detach().to(logprobs.dtype), zero)
    adv = advantages.detach().to(logprobs.dtype)
    adv = torch.where(m, adv[:, None] if adv.dim() == 1 else adv, zero)
    delta = lp - old

    if importance_sampling == "seq":
        n_i = m.sum(dim=-1).clamp(min=1).to(lp.dtype)
        log_seq_ratio = delta.sum(dim=-1) / n_i
        log_ratio = lp - lp.detach() + log_seq_ratio.detach()[:, None]
    else:
        log_ratio = delta
    ratio = torch.exp(log_ratio.clamp(max=log_ratio_clamp))
    # every token of sequence i carries the value s_i in 'seq' mode, so one column reports it
    ratio_for_metrics = ratio.detach()[:, 0] if importance_sampling == "seq" and ratio.shape[1] else ratio.detach()

    surr_unclipped = -adv * ratio
    surr_clipped = -adv * ratio.clamp(1.0 - pg_clip_low, 1.0 + pg_clip_high)
    per_token = torch.maximum(surr_unclipped, surr_clipped)
    clipped = m & (surr_clipped > surr_unclipped)
    dual_clipped = torch.zeros_like(m)
    if dual_clip_loss:
        cap = -dual_clip_c * adv
        dual_clipped = m & (adv < 0) & (per_token > cap)
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
    if is_weight is not None:
        if is_weight.shape != seq_valid.shape:
            raise ValueError(f"is_weight must be [B] = {tuple(seq_valid.shape)}, got {tuple(is_weight.shape)}")
        weight = torch.where(seq_valid, is_weight.detach().to(per_token.dtype), 1.0)  # empty rows: no NaN path
        per_token = per_token * weight[:, None]

    agg = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm_length=norm_length)
    pg_loss = aggregate(per_token, m, loss_agg_mode, **agg)
    kl_loss = zero
    if use_kl_loss:
        ref = torch.where(m, ref_logprobs.detach().to(lp.dtype), zero)
        kl_loss = aggregate(kl_k3(lp, ref), m, loss_agg_mode, **agg)
    loss = pg_loss + kl_loss_coef * kl_loss if use_kl_loss else pg_loss

    with torch.no_grad():
        metrics = _metrics(m, seq_valid, ratio_for_metrics, delta, clipped, dual_clipped, is_weight)
        metrics["pg_loss"] = float(pg_loss)
        metrics["kl_loss"] = float(kl_loss)
    return loss, metrics


def _masked_mean_max(values: Tensor, valid: Tensor) -> tuple[float, float]:
    if not bool(valid.any()):
        return 0.0, 0.0
    picked = values[valid]
    return float(picked.double().mean()), float(picked.max())


def _metrics(
    m: Tensor,
    seq_valid: Tensor,
    ratio: Tensor,
    delta: Tensor,
    clipped: Tensor,
    dual_clipped: Tensor,
    is_weight: Tensor | None,
) -> dict[str, float]:
    """clipfrac: share of valid tokens whose PPO clip is active (gradient cut); clipfrac_seq: share of
    non-empty sequences with at least one such token; dual_clipfrac likewise for the dual clip. ratio_*: over
    sequences when `ratio` is [B] ('seq': s_i), over tokens when it is [B, T] ('token'). approx_kl: token
    mean of k3 = (r - 1) - log r with r = pi_theta / pi_old per token, an estimate of KL(pi_old || pi_theta)."""
    tokens = int(m.sum())
    seqs = int(seq_valid.sum())
    denom_tok, denom_seq = max(tokens, 1), max(seqs, 1)
    ratio_mean, ratio_max = _masked_mean_max(ratio, seq_valid if ratio.dim() == 1 else m)
    d = delta.clamp(-20.0, 20.0)
    approx_kl = float(torch.where(m, torch.expm1(d) - d, 0.0).sum()) / denom_tok
    if is_weight is None:
        w_mean, w_max = (1.0, 1.0) if seqs else (0.0, 0.0)
    else:
        w_mean, w_max = _masked_mean_max(is_weight.detach(), seq_valid)
    return {
        "clipfrac": int(clipped.sum()) / denom_tok,
        "clipfrac_seq": int(clipped.any(dim=-1).sum()) / denom_seq,
        "dual_clipfrac": int(dual_clipped.sum()) / denom_tok,
        "ratio_mean": ratio_mean,
        "ratio_max": ratio_max,
        "is_weight_mean": w_mean,
        "is_weight_max": w_max,
        "approx_kl": approx_kl,
        "tokens": float(tokens),
        "seqs": float(seqs),
    }
