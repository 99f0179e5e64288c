"""Plain PyTorch learner backend: one device, AdamW on fp32 master weights, autocast, warm-up + schedule, clipping."""

from __future__ import annotations

import logging
import math
from typing import Iterator

import torch

from gspo_async.learner.backends.base import LearnerBackend
from gspo_async.learner.backends.precision import actor_dtype, autocast, autocast_dtype, check_master_weights

log = logging.getLogger(__name__)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base lr at optimiser step s: linear warm-up, then constant / cosine / linear decay to 0."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return f


def optimizer_steps_per_train_step(cfg) -> int:
    """Optimiser steps one training step takes: ``ppo_epochs`` passes of ``num_mini_batches`` mini-batches, except
    that a batch of fewer sequences than mini-batches yields one mini-batch per sequence (no empty steps)."""
    sequences = cfg.rollout_batch_size * cfg.num_return_sequences_in_group
    return cfg.ppo_epochs * min(cfg.optim.num_mini_batches, sequences)


def build_optimizer(cfg, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` and its warm-up + schedule, sized by the optimiser steps the run will take."""
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    total = cfg.learner.total_steps * optimizer_steps_per_train_step(cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, total))
    return opt, sched


class TorchBackend(LearnerBackend):
    """One device: AdamW on fp32 master weights, passes under autocast to ``model.dtype`` (see
    :mod:`~gspo_async.learner.backends.precision`), float16 with a gradient scaler."""

    def __init__(self, cfg, model: torch.nn.Module):
        check_master_weights(model, cfg)
        self.model = model
        self.grad_clip = cfg.optim.grad_clip
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype(cfg)
        self.broadcast_dtype = actor_dtype(cfg)
        self.optimizer, self.scheduler = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        # Loss scaling only for fp16 compute on fp32 masters: bf16 has fp32's exponent range, fp16 underflows.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.skipped_steps = 0  # fp16 steps skipped because the gradients overflowed
        self._last_lr = float(self.scheduler.get_last_lr()[0])

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        self.scaler.unscale_(self.optimizer)  # clip and report the true gradient, not the scaled one
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        self._last_lr = float(self.scheduler.get_last_lr()[0])  # the rate this step uses
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:  # inf/nan gradients: the step was skipped
            self.skipped_steps += 1
            log.warning("fp16 gradients overflowed (grad norm %s): optimiser step skipped, loss scale %g -> %g "
                        "(%d skipped so far)", float(norm), scale, self.scaler.get_scale(), self.skipped_steps)
        else:
            self.scheduler.step()  # the schedule counts optimiser steps actually taken
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self._last_lr

    def broadcast_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        from gspo_async.weights import named_weights

        yield from named_weights(self.model, dtype=self.broadcast_dtype)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps, "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        if "zero_stage" in state:
            raise ValueError("this checkpoint was written by the DeepSpeed engine (learner.engine: deepspeed); "
                             "resume it with that engine, or start a torch-engine run from its model/ directory "
                             "without --resume")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._last_lr = float(state.get("last_lr", self.scheduler.get_last_lr()[0]))
