"""Benchmark of the learner's micro-batching on long-tailed lengths: fixed-size micro-batches vs a token budget.

The learner's real training step (`Trainer.train_step`: collate, forward, backward, optimiser step) on synthetic
rollout groups whose lengths follow the long-tailed shape of reasoning RL: response lengths lognormal (median
`--median`, log-std `--sigma`) cut at `--response-length`, prompt lengths uniform in [`--prompt-min`,
`--prompt-max`], one prompt per group of 8. The model has the quickstart's shape (a Llama from
`gspo_async.models.tiny.tiny_config`: tied embeddings, 4x MLP) scaled to a vocabulary, hidden size and depth where
the transformer's per-token work dominates the step (see --vocab, --hidden, --layers). Padding costs only in the
transformer body: the output projection runs on real response tokens alone, so a large vocabulary relative to the
body would hide the difference.

Three modes, side by side in one process, their timed steps interleaved (A B C A B C ...) so that load from
other jobs on the machine hits all alike; each mode trains its own copy of the same initial model on the same
batches:

  padded to batch max  optim.micro_batch_size = M, every pass right-padded to the whole batch's longest row (the
                       learner before token budgets; emulated by switching off the per-micro-batch trim)
  padded               optim.micro_batch_size = M: M rows per pass in shuffled order, each pass right-padded to
                       its own longest row
  token budget         optim.max_tokens_per_micro_batch = M x (prompt_length + response_length): the same
                       worst-case pass size, rows sorted by length and packed into passes within the budget

Reported per mode: real tokens trained per second (prompt + response tokens, padding excluded; the JSON also has
response tokens alone, the learner's `throughput/train_tokens_per_s`), per wall second and per CPU second of this
process (on a machine shared with other jobs the CPU time is the steadier measure of the work done), the padding fraction of the training passes (the
trainer's own `train/padding_frac`; computed from the lengths for the first mode), and each mode's ideal bound
1 / (real-token fraction): the speedup removing all its padding at no cost would give.

    PYTHONPATH=. python tools/bench/microbatch.py            # a few minutes on 2 loaded cores
    PYTHONPATH=. python tools/bench/microbatch.py --quick    # a short check that it runs
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import Column, machine_info, markdown_table, text_table, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "tools" / "bench" / "results" / "microbatch.json"
GROUP_SIZE = 8

COLUMNS: list[Column] = [
    ("mode", "mode", None), ("setting", "setting", None),
    ("real_tokens_per_s", "real tok/s", ".0f"), ("real_tokens_per_cpu_s", "real tok/cpu-s", ".0f"),
    ("step_s", "s/step (median)", ".2f"), ("micro_batches", "passes/step", "d"),
    ("padding_frac", "padding frac", ".3f"), ("ideal", "ideal bound (1/real frac)", ".2f"),
    ("vs_batch_max", "vs batch max (wall)", ".2f"), ("vs_batch_max_cpu", "vs batch max (cpu)", ".2f"),
    ("vs_padded", "vs padded (wall)", ".2f"), ("vs_padded_cpu", "vs padded (cpu)", ".2f"),
]


def make_groups(args: argparse.Namespace, rng) -> list:
    """`--groups` rollout groups of 8 with lognormal response lengths and uniform prompt lengths (random tokens)."""
    import numpy as np

    from gspo_async.protocol.messages import Response, RolloutGroup

    groups = []
    for g in range(args.groups):
        prompt = rng.integers(3, args.vocab, size=int(rng.integers(args.prompt_min, args.prompt_max + 1)))
        responses = []
        for _ in range(GROUP_SIZE):
            n = int(min(max(round(float(np.exp(np.log(args.median) + args.sigma * rng.standard_normal()))), 1),
                        args.response_length))
            tokens = rng.integers(3, args.vocab, size=n).astype(np.int32)
            logprobs = -rng.uniform(0.5, 4.0, size=n)
            responses.append(Response.single_version(tokens, logprobs, float(rng.integers(0, 2)),
                                                     "length" if n == args.response_length else "stop", 0))
        groups.append(RolloutGroup(f"g{g}", g, "bench", prompt.astype(np.int32), responses))
    return groups


def build(mode: str, args: argparse.Namespace):
    """A Trainer with its own model copy (same initial weights) for `mode`."""
    import torch
    from transformers import AutoModelForCausalLM

    from gspo_async.config import Config
    from gspo_async.learner.backends.torch_backend import TorchBackend
    from gspo_async.learner.trainer import Trainer
    from gspo_async.models.tiny import tiny_config

    max_len = args.prompt_max + args.response_length
    optim: dict[str, Any] = dict(lr=1e-5, grad_clip=1.0)
    if mode != "token budget":
        optim["micro_batch_size"] = args.micro_batch_size
    else:
        optim["max_tokens_per_micro_batch"] = args.micro_batch_size * max_len
    cfg = Config.model_validate(dict(
        rollout_batch_size=args.groups, num_return_sequences_in_group=GROUP_SIZE, prompt_length=args.prompt_max,
        response_length=args.response_length, importance_sampling="seq", loss_agg_mode="seq-mean-token-mean",
        optim=optim))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config(args.vocab, args.hidden, args.layers, args.heads, max_len), attn_implementation="sdpa").float()
    return Trainer(cfg, TorchBackend(cfg, model), pad_id=0), cfg


MODES = ("padded to batch max", "padded", "token budget")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib
    from unittest import mock

    import numpy as np
    import torch

    from gspo_async.learner.batch import TrainBatch

    torch.set_num_threads(args.threads)
    machine = machine_info()
    rng = np.random.default_rng(args.seed)
    # a fresh batch per timed step, after a warm-up step on a small batch (first allocations, kernel selection)
    warm = argparse.Namespace(**{**vars(args), "groups": 1})
    batches = [make_groups(warm, rng)] + [make_groups(args, rng) for _ in range(args.repeats)]
    trainers = {m: build(m, args) for m in MODES}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    pads: dict[str, list[float]] = {m: [] for m in MODES}
    real = response = 0
    for i, groups in enumerate(batches):
        lengths = [len(g.prompt_tokens) + len(r.tokens) for g in groups for r in g.responses]
        for m in MODES:
            trainer, _ = trainers[m]
            # the learner before per-micro-batch trimming: every pass ran on the whole batch's longest row
            untrimmed = mock.patch.object(TrainBatch, "trimmed", lambda self: self) if m == MODES[0] else \
                contextlib.nullcontext()
            with untrimmed:
                start, start_cpu = time.perf_counter(), time.process_time()
                metrics = trainer.train_step(groups)
                elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            pad = 1 - sum(lengths) / (len(lengths) * max(lengths)) if m == MODES[0] else metrics["train/padding_frac"]
            if i > 0:  # step 0 warms up allocators and kernels
                times[m].append(elapsed)
                cpu[m].append(elapsed_cpu)
                pads[m].append(pad)
            print(f"  step {i} {m:>19}: {elapsed:6.2f} s wall, {elapsed_cpu:6.2f} s cpu, padding {pad:.3f}",
                  flush=True)
        if i > 0:
            real += sum(lengths)
            response += sum(len(r.tokens) for g in groups for r in g.responses)

    rows = []
    for m in MODES:
        trainer, cfg = trainers[m]
        total, total_cpu = sum(times[m]), sum(cpu[m])
        rows.append({"mode": m,
                     "setting": (f"max_tokens_per_micro_batch={cfg.optim.max_tokens_per_micro_batch}"
                                 if m == "token budget" else f"micro_batch_size={cfg.optim.micro_batch_size}"),
                     "real_tokens_per_s": real / total, "response_tokens_per_s": response / total,
                     "real_tokens_per_cpu_s": real / total_cpu,
                     "step_s": statistics.median(times[m]), "step_times_s": times[m], "step_cpu_s": cpu[m],
                     "micro_batches": passes(trainer, batches[-1]), "padding_frac": statistics.mean(pads[m]),
                     "padding_fracs": pads[m]})
    for r in rows:
        r["ideal"] = 1.0 / (1.0 - r["padding_frac"])  # this mode's speedup if its padding cost nothing
        for key, ref in (("vs_batch_max", rows[0]), ("vs_padded", rows[1])):
            r[key] = r["real_tokens_per_s"] / ref["real_tokens_per_s"]
            r[key + "_cpu"] = r["real_tokens_per_cpu_s"] / ref["real_tokens_per_cpu_s"]
    return {"benchmark": "learner micro-batching on long-tailed lengths: padded micro-batches vs a token budget",
            "machine": machine, "workload": {
                "groups": args.groups, "group_size": GROUP_SIZE, "response_median": args.median, "sigma": args.sigma,
                "response_length": args.response_length, "prompt_lengths": [args.prompt_min, args.prompt_max],
                "timed_steps": args.repeats, "real_tokens_per_step": real / args.repeats,
                "response_tokens_per_step": response / args.repeats},
            "model": {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                      "params_m": sum(p.numel() for p in trainers[MODES[0]][0].engine.model.parameters()) / 1e6},
            "threads": args.threads, "rows": rows}


def findings(result: dict[str, Any]) -> list[str]:
    """One line per baseline: the token budget's speedup, the baseline's ideal bound and the share of it reached."""
    rows = {r["mode"]: r for r in result["rows"]}
    tb = rows["token budget"]
    out = []
    for base, key in ((MODES[0], "vs_batch_max"), (MODES[1], "vs_padded")):
        b = rows[base]
        out.append(f"token budget vs {base}: {tb[key]:.2f}x real tokens per wall second, {tb[key + '_cpu']:.2f}x per "
                   f"CPU second; ideal bound {b['ideal']:.2f}x (1 / real-token fraction {1 - b['padding_frac']:.3f}); "
                   f"{tb[key] / b['ideal']:.0%} (wall) and {tb[key + '_cpu'] / b['ideal']:.0%} (cpu) of the bound")
    return out


def passes(trainer, groups) -> int:
    """Forward/backward passes of one step on `groups` (micro-batches of the trainer's plan)."""
    import torch

    from gspo_async.learner.batch import collate_groups

    batch = collate_groups(groups, 0)
    return len(trainer._micro_batches(torch.arange(batch.num_sequences), batch.seq_lengths))


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """The micro-batching section of docs/benchmarks.md."""
    w, m = result["workload"], result["model"]
    return "\n".join([
        f"The learner's training step (`Trainer.train_step`: collate, forward, backward, AdamW step) on "
        f"{w['groups']} groups x {w['group_size']} responses per step, response lengths lognormal (median "
        f"{w['response_median']}, sigma {w['sigma']}) cut at {w['response_length']}, prompt lengths uniform in "
        f"{w['prompt_lengths'][0]}-{w['prompt_lengths'][1]}: {w['real_tokens_per_step']:.0f} real tokens "
        f"({w['response_tokens_per_step']:.0f} response tokens) per step. Model: the quickstart's Llama shape at "
        f"vocab {m['vocab']}, hidden {m['hidden']}, {m['layers']} layers ({m['params_m']:.1f}M parameters), float32, "
        f"{result['threads']} thread. All three modes in one process, {w['timed_steps']} timed steps each, interleaved, "
        "on a machine shared with other jobs (absolute rates are noisy; `cpu` columns count this process's CPU "
        "seconds, steadier than wall time under load). `padded to batch max` "
        "is the learner before token budgets (every pass ran on the whole batch's longest row); `padded` is fixed "
        "`micro_batch_size` with each pass cut to its own longest row; `token budget` packs rows sorted by length "
        "with the same worst-case pass size. `padding frac`: share of the training passes' token slots that were "
        "padding (`train/padding_frac`); `ideal bound`: a mode's speedup if its padding cost nothing, counting "
        "work as linear in token slots. Attention work grows with the square of the padded length, so removing "
        "padding from passes padded to a 4k-token row can beat that bound (`tools/bench/microbatch.py`).",
        "", markdown_table(result["rows"], COLUMNS), "", *(f"- {line}" for line in findings(result))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=4, help="groups of 8 responses per step")
    ap.add_argument("--median", type=float, default=300.0, help="median response length (tokens)")
    ap.add_argument("--sigma", type=float, default=1.0, help="log-std of the response length")
    ap.add_argument("--response-length", type=int, default=4096, help="cut (response_length)")
    ap.add_argument("--prompt-min", type=int, default=50)
    ap.add_argument("--prompt-max", type=int, default=500, help="also prompt_length")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--micro-batch-size", type=int, default=4,
                    help="M: padded rows per pass; the token budget is M x (prompt_length + response_length)")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a short check: 2 groups, median 60, cut 512, 1 step")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.quick:
        args.groups, args.median, args.response_length, args.prompt_min, args.prompt_max = 2, 60.0, 512, 10, 100
        args.vocab, args.hidden, args.repeats = 1024, 128, 1
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"micro-batching benchmark: {args.groups} groups x {GROUP_SIZE}, lognormal median {args.median} "
          f"sigma {args.sigma} cut {args.response_length}, prompts {args.prompt_min}-{args.prompt_max}", flush=True)
    result = run(args)
    print(text_table(result["rows"], COLUMNS))
    for line in findings(result):
        print(line)
    print(f"wrote {write_result(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
