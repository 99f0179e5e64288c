"""Plain PyTorch learner engine: one device, AdamW, warm-up + schedule, gradient clipping."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from gspo_async.learner.backends.base import LearnerBackend


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


def build_optimizer(cfg, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    total = cfg.learner.total_steps * cfg.ppo_epochs * o.num_mini_batches
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, total))
    return opt, sched


class TorchBackend(LearnerBackend):
    def __init__(self, cfg, model: torch.nn.Module):
        self.model = model
        self.grad_clip = cfg.optim.grad_clip
        self.optimizer, self.scheduler = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def broadcast_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        from gspo_async.weights import named_weights

        yield from named_weights(self.model)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
