"""The tiny local model of the quickstart and the tests: a character-level tokenizer, a small Llama built from a
config (no hub access), a short supervised warm-up on a built-in task, saved in Hugging Face format.

The defaults were chosen so that the warmed-up model is often wrong greedily but often right among a group of
samples (held-out greedy accuracy about 0.35, pass@8 about 0.7): that is the headroom group RL turns into greedy
accuracy. Starting from a model that is almost never right gave group RL little to work with.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from gspo_async.models.tiny import tiny_config

TINY_META = "tiny_meta.json"


def build_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    task: str = "arithmetic",
    task_options: dict[str, Any] | None = None,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    warmup_steps: int = 1500,
    warmup_target_accuracy: float | None = 0.3,
    warmup_lr: float = 3e-3,
    warmup_batch_size: int = 64,
    max_new_tokens: int = 8,
    num_threads: int | None = 1,
    overwrite: bool = False,
    log_every: int = 0,
) -> Path:
    """Build, warm up, evaluate and save the tiny model and tokenizer into `out_dir`; returns `out_dir`.

    The warm-up runs at most `warmup_steps` steps and stops early once greedy accuracy on 200 training prompts
    reaches `warmup_target_accuracy` (checked every 10 steps; None: run all steps). Stopping at a target rather
    than after a fixed step count matters: the task is learned in a sudden jump whose timing varies with the seed,
    and RL gains most when it starts on the jump (often right greedily sometimes, right within a group of 8 often).

    out_dir receives config.json, model.safetensors, the tokenizer files and tiny_meta.json (task, seed, settings,
    warm-up steps, loss and seconds, held-out greedy accuracy, sampled accuracy and pass@8 at temperature 1).
    An out_dir holding a build with the same settings is reused unless `overwrite`. num_threads sets torch's
    intra-op threads for the build (None: leave as is).
    """
    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import HFEngine
    from gspo_async.tasks.scoring import RewardRunner
    from gspo_async.models.tokenizer import build_char_tokenizer
    from gspo_async.bootstrap.warmup import warm_up
    from gspo_async.tasks import get_task
    from gspo_async.tasks.evaluate import evaluate

    out = Path(out_dir)
    settings = {
        "seed": seed, "task": task, "task_options": task_options or {}, "hidden_size": hidden_size,
        "layers": layers, "heads": heads, "warmup_steps": warmup_steps,
        "warmup_target_accuracy": warmup_target_accuracy, "warmup_lr": warmup_lr,
        "warmup_batch_size": warmup_batch_size, "max_new_tokens": max_new_tokens,
    }  # fmt: skip
    meta_path = out / TINY_META
    if meta_path.is_file() and not overwrite:
        old = json.loads(meta_path.read_text())
        if old.get("settings") == settings and (out / "config.json").is_file():
            return out
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    from transformers import LlamaForCausalLM

    t0 = time.monotonic()
    the_task = get_task(task, **(task_options or {}))
    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(len(tokenizer), hidden_size, layers, heads, max_positions=256))
    engine = HFEngine((model, tokenizer), seed=seed)
    scorer = RewardRunner(the_task.reward_fn)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    dev = list(itertools.islice(the_task.train_items(seed + 1), 200))  # training prompts: eval stays unseen
    dev_accuracy = [0.0]

    def reached_target() -> bool:
        dev_accuracy[0] = evaluate(engine, tokenizer, dev, scorer.score, greedy)["accuracy"]
        return warmup_target_accuracy is not None and dev_accuracy[0] >= warmup_target_accuracy

    result = warm_up(
        model, tokenizer, the_task.train_items(seed), warmup_steps, warmup_lr, warmup_batch_size,
        stop=reached_target, log_every=log_every,
    )  # fmt: skip
    evals = the_task.eval_items()
    held_out = evaluate(engine, tokenizer, evals, scorer.score, greedy)
    sampled = evaluate(
        engine, tokenizer, evals, scorer.score, SamplingSettings(temperature=1.0, max_new_tokens=max_new_tokens), n=8
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "task": task,
        "seed": seed,
        "settings": settings,
        "params": sum(p.numel() for p in model.parameters()),
        "warmup_steps_done": result["steps"],
        "warmup_loss": result["loss"],
        "warmup_seconds": result["seconds"],
        "warmup_dev_accuracy": dev_accuracy[0],
        "greedy_accuracy": held_out["accuracy"],
        "sample_accuracy": sampled["accuracy"],
        "pass_at_8": sampled["pass_at_n"],
        "build_seconds": time.monotonic() - t0,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out
