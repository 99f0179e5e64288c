"""Supervised warm-up: a few hundred steps of next-token training on (prompt, answer) pairs of a task.

The loss covers the answer tokens and the EOS only (the prompt is given, not learned), averaged over those tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.prompting import encode_prompt


def supervised_batch(tokenizer: Any, items: list[PromptItem], encode: Callable[[Any], list[int]] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded [B, L] input ids, attention mask and loss mask (1 on answer tokens and EOS) for `items`.

    encode: prompt -> token ids, the run's `PromptEncoder` (so the warm-up sees prompts as RL will); default:
    plain text, no chat template."""
    seqs, starts = [], []
    for it in items:
        prompt = encode(it.prompt) if encode is not None else encode_prompt(tokenizer, it.prompt, chat=False)
        answer = tokenizer(it.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        starts.append(len(prompt))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        loss_mask[i, start : len(s)] = 1.0
    return ids, attn, loss_mask


def answer_loss(model: Any, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of the tokens where loss_mask is 1, each predicted from its prefix."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    mask = loss_mask[:, 1:]
    return (nll * mask).sum() / mask.sum()


def warm_up(
    model: Any,
    tokenizer: Any,
    items: Iterator[PromptItem],
    steps: int,
    lr: float,
    batch_size: int,
    ramp_steps: int = 100,
    stop: Callable[[], bool] | None = None,
    check_every: int = 10,
    log_every: int = 0,
    encode: Callable[[Any], list[int]] | None = None,
) -> dict[str, float]:
    """Train `model` in place for at most `steps` AdamW steps (lr ramps up linearly over `ramp_steps`, then stays).

    stop: called every `check_every` steps (model in eval mode); True ends the warm-up early.
    encode: prompt -> token ids (see `supervised_batch`).
    Returns the final loss (mean over the last 10 steps), the steps taken and the wall time in seconds.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    t0, recent, step = time.monotonic(), [], 0
    while step < steps:
        step += 1
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / max(1, ramp_steps))
        model.train()
        batch = list(itertools.islice(items, batch_size))
        loss = answer_loss(model, *supervised_batch(tokenizer, batch, encode))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.eval()
        recent = (recent + [loss.item()])[-10:]
        if log_every and step % log_every == 0:
            print(f"warm-up step {step}/{steps} loss {sum(recent) / len(recent):.3f}", flush=True)
        if stop is not None and step % check_every == 0 and stop():
            break
    return {"loss": sum(recent) / max(1, len(recent)), "steps": step, "seconds": time.monotonic() - t0}
