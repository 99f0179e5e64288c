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

import logging
from typing import Optional

import torch

from gspo_async.algo import RunningMoments, compute_advantages, geometric_rejection_mask, policy_loss
from gspo_async.algo.logprobs import IDENTITY, LogitTransform, token_logprobs_from_hidden
from gspo_async.algo.off_policy import select_old_logprobs
from gspo_async.algo.overlong import mask_truncated, soft_overlong_penalty
from gspo_async.learner.batch import TrainBatch, collate_groups
from gspo_async.learner.backends.base import LearnerBackend
from gspo_async.learner.microbatch import padded_tokens, plan_fixed, plan_token_budget
from gspo_async.models.loading import disable_dropout
from gspo_async.models.logits import logit_transform
from gspo_async.protocol.messages import RolloutGroup

# How per-micro-batch metrics combine into one step's value: maxima; sums (each call's loss is already its share
# of the mini-batch's global denominator, so summing over micro-batches and averaging over mini-batches gives the
# loss); sequence-weighted means (per-sequence quantities); every other metric is a token-weighted mean.
_MAX_METRICS = ("ratio_max", "is_weight_max")
_SUM_METRICS = ("pg_loss", "kl_loss")
_SEQ_METRICS = ("clipfrac_seq", "is_weight_mean")

log = logging.getLogger(__name__)


def response_logprobs(model: torch.nn.Module, batch: TrainBatch, *, temperature: float, chunk_size: int = 1024,
                      compute_entropy: bool = False, transform: LogitTransform = IDENTITY,
                      path: str = "chunked") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log pi(response token | prefix) at the sampling temperature, [B, T] (0 under the mask), and entropy.

    ``path="chunked"``: only the hidden states that predict response tokens go through the output projection and
    the architecture's logit `transform` (:func:`gspo_async.models.logits.logit_transform`), in chunks, so the
    [tokens x vocab] float32 log-softmax is never held at once. ``path="model"``: the model's own forward and its
    full logits (any architecture; [B, L, V] in memory).
    """
    B, T = batch.response_ids.shape
    device = batch.input_ids.device
    # position p predicts token p + 1: response token t sits at start + t, so read start + t - 1.
    pos = (batch.response_start[:, None] + torch.arange(T, device=device)[None, :] - 1).clamp(
        0, batch.input_ids.shape[1] - 1)
    rows = torch.arange(B, device=device)[:, None].expand(B, T)
    mask = batch.response_mask
    labels = batch.response_ids[mask]
    if path == "model":
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]
        logp = (logits[rows[mask], pos[mask]].float() / temperature).log_softmax(-1)
        lp = logp.gather(-1, labels[:, None].long())[:, 0]
        ent = -(logp.exp() * logp).sum(-1) if compute_entropy else None
    elif path == "chunked":
        base = getattr(model, model.base_model_prefix)
        hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state  # [B, L, H]
        head = model.get_output_embeddings()
        lp, ent = token_logprobs_from_hidden(hidden[rows[mask], pos[mask]], head.weight, labels,
                                             bias=getattr(head, "bias", None), temperature=temperature,
                                             chunk_size=chunk_size, compute_entropy=compute_entropy,
                                             transform=transform)
    else:
        raise ValueError(f"log-prob path {path!r} is not one of chunked, model")
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
        self.slots = 0  # padded token slots of the current step's training passes
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if (cfg.use_kl_loss or cfg.add_token_level_kl) and ref_model is None:
            raise ValueError("use_kl_loss / add_token_level_kl need a reference model")
        # Training passes run in train mode, the no-grad passes in eval mode: with dropout the on-policy ratio
        # would not be 1. The models are loaded with dropout off; this covers models built any other way.
        for m in (engine.model, ref_model):
            if m is not None:
                disable_dropout(m)
        self.logprob_path = cfg.model.logprob_path
        # Refuses, by name, an architecture whose logit processing the chunked path cannot reproduce.
        self.transform = logit_transform(engine.model.config) if self.logprob_path == "chunked" else IDENTITY
        budget = cfg.optim.max_tokens_per_micro_batch
        if budget:
            log.info("micro-batches: token budget of %d padded tokens each (rows sorted by length, each micro-batch "
                     "right-padded to its longest row; optim.micro_batch_size is not used)", budget)
        else:
            log.info("micro-batches: %d sequences each in shuffled order, each right-padded to its longest row "
                     "(set optim.max_tokens_per_micro_batch to pack by tokens for long-tailed lengths)",
                     cfg.optim.micro_batch_size)

    def _micro_batches(self, rows: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """`rows` (indices into the batch) split into micro-batches by the configured plan (see
        :mod:`gspo_async.learner.microbatch`); lengths [B] are the whole batch's row lengths. Adds the plan's padded
        token slots to ``self.slots`` (for ``train/padding_frac``)."""
        n = [int(x) for x in lengths[rows].tolist()]
        budget = self.cfg.optim.max_tokens_per_micro_batch
        plan = plan_token_budget(n, budget) if budget else plan_fixed(len(n), self.cfg.optim.micro_batch_size)
        self.slots += padded_tokens(n, plan)
        return [rows[torch.as_tensor(p, dtype=torch.long, device=rows.device)] for p in plan]

    # ----- helpers -----
    def _logprobs_no_grad(self, model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=batch.response_ids.device)
        rows_all = torch.arange(batch.num_sequences, device=batch.response_ids.device)
        with torch.no_grad():
            for rows in self._micro_batches(rows_all, batch.seq_lengths):
                with self.engine.autocast():
                    lp = response_logprobs(model, batch.select(rows).trimmed(),
                                           temperature=self.cfg.sampling.temperature, transform=self.transform,
                                           path=self.logprob_path)[0]
                out[rows] = self._pad_to(lp, batch.response_ids.shape[1]).to(out.dtype)
        return out

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
        lengths = batch.seq_lengths
        self.slots = 0
        need_prox = cfg.off_policy.correction in ("decoupled", "recompute")
        if need_prox or self.ref_model is not None:
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
        if cfg.mask_truncated_responses:  # no loss on cut responses; their rewards still shape the group's stats
            train_mask = mask_truncated(train_mask, batch.truncated)
        rewards = batch.rewards
        penalty = None
        if cfg.overlong_penalty.enabled:
            o = cfg.overlong_penalty
            penalty = soft_overlong_penalty(mask.sum(1), cfg.response_length, o.buffer_length, o.penalty_factor)
            rewards = rewards + penalty.to(rewards.dtype)

        advantages = compute_advantages(
            rewards, train_mask, group_size=batch.group_size, adv_estimator=cfg.adv_estimator,
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
        if not model.training:  # (a walk over every module: skipped when nothing switched it to eval mode)
            model.train()
        self.slots = 0  # count the training passes only (the no-grad passes above are cheaper)
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
                for micro in self.engine.shard(self._micro_batches(mini, lengths)):
                    sub = batch.select(micro).trimmed()  # forward on this micro-batch's own longest row
                    T = sub.response_ids.shape[1]
                    with self.engine.autocast():
                        logprobs, entropy = response_logprobs(model, sub, temperature=cfg.sampling.temperature,
                                                              compute_entropy=True, transform=self.transform,
                                                              path=self.logprob_path)
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

        n_steps = max(len(losses), 1)  # optimiser steps taken (a batch smaller than num_mini_batches takes fewer)
        out = {f"train/{k}": v / max(seq_total if "_seq:" + k in sums else weight_total, 1.0)
               for k, v in sums.items() if not k.startswith("_seq:")}
        out.update({f"train/{k}": v for k, v in maxima.items()})
        out.update({f"train/{k}": v / n_steps for k, v in totals.items()})
        out["train/loss"] = sum(losses) / max(len(losses), 1)
        out["train/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["train/lr"] = self.engine.lr()
        out["train/tokens"] = float(mask.sum())
        out["train/samples"] = float(B)
        # padding share of the training passes' token slots (every rank plans the same, so this is the whole step's)
        out["train/padding_frac"] = 1.0 - cfg.ppo_epochs * float(lengths.sum()) / max(self.slots, 1)
        lengths = mask.sum(1).float()
        out["response/length_mean"] = float(lengths.mean())
        out["response/length_max"] = float(lengths.max())
        out["train/rejected_frac"] = rejected / max(B, 1)
        out["reward/mean"] = float(batch.rewards.mean())
        out["response/truncated_frac"] = float(batch.truncated.float().mean())
        if penalty is not None:
            out["reward/overlong_penalty"] = float(penalty.mean())
        out["reward/std"] = float(batch.rewards.std()) if B > 1 else 0.0
        return out
