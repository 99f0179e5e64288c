"""One GSPO training step on a batch of rollout groups (design §2, in order).

1. collate the groups into padded tensors (:mod:`gspo_async.learner.batch`);
2. log-probs the update needs before it starts, without gradients: pi_prox with the learner's current weights
   (``decoupled`` and ``recompute`` corrections) and pi_ref (KL loss or token-level KL penalty);
3. rewards -> advantages (normalisation, reward clip, optional token KL, whitening, advantage clip);
4. choose pi_old and the per-sequence staleness weight by the correction mode (behaviour | decoupled | recompute);
5. ``ppo_epochs`` passes, each split into ``num_mini_batches`` mini-batches (one optimiser step each), each
   mini-batch accumulated over micro-batches whose loss uses the mini-batch's *global* token and sequence counts,
   so the accumulated gradient equals that of the whole mini-batch.
"""

from __future__ import annotations

from typing import Optional

import torch

from gspo_async.algo import RunningMoments, compute_advantages, geometric_rejection_mask, policy_loss
from gspo_async.algo.logprobs import token_logprobs_from_hidden
from gspo_async.algo.off_policy import select_old_logprobs
from gspo_async.learner.batch import TrainBatch, collate_groups
from gspo_async.learner.backends.base import LearnerBackend
from gspo_async.protocol.messages import RolloutGroup

# How per-micro-batch metrics combine into one step's value: maxima; sums (each call's loss is already its share
# of the mini-batch's global denominator, so summing over micro-batches and averaging over mini-batches gives the
# loss); sequence-weighted means (per-sequence quantities); every other metric is a token-weighted mean.
_MAX_METRICS = ("ratio_max", "is_weight_max")
_SUM_METRICS = ("pg_loss", "kl_loss")
_SEQ_METRICS = ("clipfrac_seq", "is_weight_mean")


def response_logprobs(model: torch.nn.Module, batch: TrainBatch, *, temperature: float, chunk_size: int = 1024,
                      compute_entropy: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log pi(response token | prefix) at the sampling temperature, [B, T] (0 under the mask), and entropy.

    Only the hidden states that predict response tokens go through the output projection, in chunks, so the
    [tokens x vocab] float32 log-softmax is never held at once.
    """
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state  # [B, L, H]
    B, T = batch.response_ids.shape
    # hidden at position p predicts token p + 1: response token t sits at start + t, so read start + t - 1.
    device = hidden.device
    pos = (batch.response_start[:, None] + torch.arange(T, device=device)[None, :] - 1).clamp(0, hidden.shape[1] - 1)
    rows = torch.arange(B, device=device)[:, None].expand(B, T)
    mask = batch.response_mask
    head = model.get_output_embeddings()
    lp, ent = token_logprobs_from_hidden(hidden[rows[mask], pos[mask]], head.weight, batch.response_ids[mask],
                                         bias=getattr(head, "bias", None), temperature=temperature,
                                         chunk_size=chunk_size, compute_entropy=compute_entropy)
    logprobs = torch.zeros((B, T), dtype=lp.dtype, device=device).masked_scatter(mask, lp)
    entropy = torch.zeros((B, T), dtype=ent.dtype, device=device).masked_scatter(mask, ent) if ent is not None else None
    return logprobs, entropy


class Trainer:
    """Owns the algorithm settings and runs :meth:`train_step`; the engine owns weights and optimiser."""

    def __init__(self, cfg, engine: LearnerBackend, pad_id: int, ref_model: Optional[torch.nn.Module] = None):
        self.cfg = cfg
        self.engine = engine
        self.pad_id = pad_id
        self.ref_model = ref_model
        self.running = RunningMoments()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if (cfg.use_kl_loss or cfg.add_token_level_kl) and ref_model is None:
            raise ValueError("use_kl_loss / add_token_level_kl need a reference model")

    # ----- helpers -----
    def _logprobs_no_grad(self, model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for rows in torch.arange(batch.num_sequences).split(self.cfg.optim.micro_batch_size):
                out.append(self._pad_to(response_logprobs(model, batch.select(rows),
                                                          temperature=self.cfg.sampling.temperature)[0],
                                        batch.response_ids.shape[1]))
        return torch.cat(out)

    @staticmethod
    def _pad_to(x: torch.Tensor, T: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1])) if x.shape[1] < T else x

    # ----- the step -----
    def train_step(self, groups: list[RolloutGroup]) -> dict[str, float]:
        """Train on `groups` (``rollout_batch_size`` of them); returns metrics as ``train/...`` names."""
        cfg = self.cfg
        model = self.engine.model
        batch = collate_groups(groups, self.pad_id).to(next(model.parameters()).device)
        mask = batch.response_mask
        need_prox = cfg.off_policy.correction in ("decoupled", "recompute")
        model.eval()  # no dropout while measuring pi_prox and pi_ref
        prox = self._logprobs_no_grad(model, batch) if need_prox else None
        ref = self._logprobs_no_grad(self.ref_model, batch) if self.ref_model is not None else None

        old, is_weight = select_old_logprobs(cfg.off_policy.correction, batch.behaviour_logprobs, prox, mask,
                                             is_weight_cap=cfg.off_policy.is_weight_cap)
        train_mask = mask
        rejected = 0
        if cfg.off_policy.rejection is not None and prox is not None:
            keep = geometric_rejection_mask(prox, batch.behaviour_logprobs, mask, cfg.off_policy.rejection.low,
                                            cfg.off_policy.rejection.high)
            rejected = int((~keep).sum())
            train_mask = mask & keep[:, None]

        advantages = compute_advantages(
            batch.rewards, train_mask, group_size=batch.group_size, adv_estimator=cfg.adv_estimator,
            reward_norm=cfg.reward_norm, reward_shift=cfg.reward_shift, reward_scale=cfg.reward_scale,
            reward_clip=cfg.reward_clip, add_token_level_kl=cfg.add_token_level_kl,
            token_kl_coef=cfg.token_level_kl_coef, old_logprobs=old, ref_logprobs=ref,
            whiten_advantages=cfg.whiten_advantages, advantage_clip=cfg.advantage_clip,
            running=self.running if cfg.reward_norm == "running" else None)

        low, high = cfg.clip_range
        loss_options = dict(importance_sampling=cfg.importance_sampling, pg_clip_low=low, pg_clip_high=high,
                            dual_clip_loss=cfg.dual_clip_loss, dual_clip_c=cfg.dual_clip_c,
                            loss_agg_mode=cfg.loss_agg_mode, use_kl_loss=cfg.use_kl_loss,
                            kl_loss_coef=cfg.kl_loss_coef, norm_length=cfg.loss_agg_norm_length or cfg.response_length,
                            log_ratio_clamp=cfg.log_ratio_clamp)
        model.train()
        sums: dict[str, float] = {}
        maxima: dict[str, float] = {}
        totals: dict[str, float] = {}
        weight_total = seq_total = 0.0
        grad_norms, losses = [], []
        B = batch.num_sequences
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=self.generator)
            for mini in order.tensor_split(cfg.optim.num_mini_batches):
                if len(mini) == 0:
                    continue
                num_tokens = train_mask[mini].sum().clamp(min=1)
                num_seqs = (train_mask[mini].sum(1) > 0).sum().clamp(min=1)
                mini_loss = 0.0
                for micro in self.engine.shard(list(mini.split(cfg.optim.micro_batch_size))):
                    sub = batch.select(micro)
                    T = int(sub.response_mask.sum(1).max().clamp(min=1))  # trim right padding
                    sub.response_ids, sub.response_mask = sub.response_ids[:, :T], sub.response_mask[:, :T]
                    logprobs, entropy = response_logprobs(model, sub, temperature=cfg.sampling.temperature,
                                                          compute_entropy=True)
                    m = train_mask[micro][:, :T]
                    loss, metrics = policy_loss(
                        logprobs, old[micro][:, :T], advantages[micro][:, :T], m,
                        is_weight=is_weight[micro] if is_weight is not None else None,
                        ref_logprobs=ref[micro][:, :T] if ref is not None else None,
                        num_tokens=num_tokens, num_seqs=num_seqs, **loss_options)
                    self.engine.backward(loss)
                    mini_loss += float(loss.detach())
                    w = float(m.sum())
                    n_seq = float((m.sum(1) > 0).sum())
                    weight_total += w
                    seq_total += n_seq
                    metrics["entropy"] = float((entropy.detach() * m).sum() / max(w, 1.0))
                    seq_ratio = cfg.importance_sampling == "seq"
                    for k, v in metrics.items():
                        if k in ("tokens", "seqs"):
                            continue
                        if k in _MAX_METRICS:
                            maxima[k] = max(maxima.get(k, float("-inf")), v)
                        elif k in _SUM_METRICS:
                            totals[k] = totals.get(k, 0.0) + v
                        elif k in _SEQ_METRICS or (seq_ratio and k == "ratio_mean"):
                            sums[k] = sums.get(k, 0.0) + v * n_seq
                            sums.setdefault("_seq:" + k, 0.0)
                        else:
                            sums[k] = sums.get(k, 0.0) + v * w
                grad_norms.append(self.engine.step())
                losses.append(mini_loss)

        n_steps = max(cfg.ppo_epochs * cfg.optim.num_mini_batches, 1)
        out = {f"train/{k}": v / max(seq_total if "_seq:" + k in sums else weight_total, 1.0)
               for k, v in sums.items() if not k.startswith("_seq:")}
        out.update({f"train/{k}": v for k, v in maxima.items()})
        out.update({f"train/{k}": v / n_steps for k, v in totals.items()})
        out["train/loss"] = sum(losses) / max(len(losses), 1)
        out["train/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["train/lr"] = self.engine.lr()
        out["train/tokens"] = float(mask.sum())
        out["train/samples"] = float(B)
        lengths = mask.sum(1).float()
        out["response/length_mean"] = float(lengths.mean())
        out["response/length_max"] = float(lengths.max())
        out["train/rejected_frac"] = rejected / max(B, 1)
        out["reward/mean"] = float(batch.rewards.mean())
        out["reward/std"] = float(batch.rewards.std()) if B > 1 else 0.0
        return out
