"""Benchmark of the learner's precision: the quickstart trained in fp32, in bf16 with fp32 master weights (autocast,
``learner.precision: mixed``) and in pure bf16 (weights and AdamW state in bf16, ``learner.precision: pure``),
side by side in one run, at a learning rate where fp32 learns but an Adam step is below half a bf16 ulp of most
weights.

Every run is the real system end to end (the processes ``gspo-async local`` starts: one learner, two actors with
the transformers engine) on configs/quickstart.yaml with the same seed and step budget; runs differ only in

  fp32           model.dtype float32
  bf16-autocast  model.dtype bfloat16, learner.precision mixed (the actors hold and generate in bf16 too)
  bf16-pure      model.dtype bfloat16, learner.precision pure

Reported: held-out greedy accuracy at every evaluation (the same steps in every run), the final one's gap to fp32,
and the mean per-step reward. The acceptance criterion is bf16-autocast at most 5 points below fp32 at the
same step.

    PYTHONPATH=. python tools/bench/precision.py                     # 300 steps (the quickstart's) at lr 3e-5
    PYTHONPATH=. python tools/bench/precision.py --steps 150 --lr 1e-4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import Column, machine_info, markdown_table, text_table, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "tools" / "bench" / "results" / "precision.json"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
MODEL_DIR = ROOT / "runs" / "bench" / "tiny-model"
WORKDIR = ROOT / "runs" / "bench" / "precision"
MODES = {
    "fp32": ["model.dtype=float32", "learner.precision=mixed"],
    "bf16-autocast": ["model.dtype=bfloat16", "learner.precision=mixed"],
    "bf16-pure": ["model.dtype=bfloat16", "learner.precision=pure"],
}
COLUMNS: list[Column] = [("mode", "mode", None), ("start_acc", "start acc", ".3f"), ("final_acc", "final acc", ".3f"),
                         ("gap_to_fp32", "vs fp32 (points)", "+.1f"), ("peak_acc", "peak acc", ".3f"),
                         ("reward_mean", "mean reward", ".3f"), ("steps_done", "steps", "d"),
                         ("train_seconds", "train s", ".0f")]


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One quickstart run in `mode`; its accuracy curve and training figures."""
    import json

    from gspo_async.telemetry.registry import read_metrics
    from tools.bench.learning import curve
    from tools.bench.pipeline import launch

    overrides = [f"seed={args.seed}", f"actor.seed={args.seed}", f"learner.total_steps={args.steps}",
                 f"learner.eval_every={args.eval_every}", "learner.checkpoint.every=0",
                 "telemetry.dashboard_port=null", f"optim.lr={args.lr}", *MODES[mode], *args.set]
    run = launch(f"{mode}-lr{args.lr:g}", overrides, engine="hf", actors=args.actors, settings=None,
                 base_config=args.config, timeout_s=args.timeout, workdir=WORKDIR)
    figures = curve(run["run_dir"])
    rewards = [r["reward/mean"] for r in read_metrics(run["run_dir"])
               if r.get("role") == "learner" and "reward/mean" in r and "learner/wait_s" in r]
    summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    return {"mode": mode, **figures, "reward_mean": statistics.fmean(rewards) if rewards else None,
            "summary_steps": summary.get("steps")}


def rows_of(runs: list[dict]) -> list[dict]:
    by = {r["mode"]: r for r in runs}
    base = by.get("fp32")
    rows = []
    for r in runs:
        evals = r["evals"]
        final = evals[-1]["accuracy"]
        same_step = None
        if base is not None:  # fp32's accuracy at this run's last evaluated step
            at = {e["step"]: e["accuracy"] for e in base["evals"]}
            same_step = at.get(evals[-1]["step"])
        rows.append({"mode": r["mode"], "start_acc": evals[0]["accuracy"], "final_acc": final,
                     "final_step": evals[-1]["step"],
                     "gap_to_fp32": 100 * (final - same_step) if same_step is not None else None,
                     "peak_acc": max(e["accuracy"] for e in evals), "reward_mean": r["reward_mean"],
                     "steps_done": r["steps_done"], "train_seconds": r["train_seconds"]})
    return rows


def findings(result: dict[str, Any]) -> list[str]:
    """One line per low-precision mode: its accuracy gap to fp32 at the same step, against the 5-point criterion."""
    rows = {r["mode"]: r for r in result["rows"]}
    fp32 = rows.get("fp32")
    if fp32 is None:
        return []
    lines = [f"fp32: {fp32['start_acc']:.3f} -> {fp32['final_acc']:.3f} by step {fp32['final_step']} "
             f"({100 * (fp32['final_acc'] - fp32['start_acc']):+.1f} points)"]
    for mode in ("bf16-autocast", "bf16-pure"):
        r = rows.get(mode)
        if r is None or r["gap_to_fp32"] is None:
            continue
        gap = r["gap_to_fp32"]
        verdict = "meets" if gap >= -5.0 else "fails"  # the criterion: at most 5 points below fp32
        lines.append(f"{mode}: {r['start_acc']:.3f} -> {r['final_acc']:.3f} by step {r['final_step']}, "
                     f"{gap:+.1f} points from fp32 at that step ({verdict} the criterion: at most 5 points below "
                     "fp32)")
    return lines


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """The precision section of docs/benchmarks.md."""
    return "\n".join([
        f"The quickstart (`{result['config']}`, one learner and two transformers-engine actors, CPU) trained "
        f"{result['steps']} steps at lr {result['lr']:g}, seed {result['seed']}, in three precisions side by side in "
        "one run: `fp32`; `bf16-autocast` (`model.dtype: bfloat16`, `learner.precision: mixed`: fp32 master weights "
        "and AdamW state, forward and backward under `torch.autocast(bfloat16)`, actors generating in bf16); "
        "`bf16-pure` (`learner.precision: pure`: weights and AdamW state in bf16, updates below half an ulp lost). "
        "Held-out greedy accuracy on the task's evaluation set; `vs fp32`: the gap to fp32's accuracy at the same "
        "step, in points (`tools/bench/precision.py`).",
        "", markdown_table(result["rows"], COLUMNS), "", *(f"- {line}" for line in findings(result))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help=f"from {', '.join(MODES)}")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--config", type=Path, default=BASE_CONFIG)
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every run")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        ap.error(f"--modes: unknown {sorted(set(modes) - set(MODES))}; choose from {', '.join(MODES)}")

    from gspo_async.config import load_config
    from gspo_async.bootstrap import ensure_model

    machine = machine_info()
    started = time.time()
    ensure_model(load_config(args.config, args.set + [f"model.path={MODEL_DIR}"]))
    runs = []
    for i, mode in enumerate(modes, 1):
        print(f"[{i}/{len(modes)}] {mode} lr {args.lr:g}, {args.steps} steps ...", flush=True)
        r = run_mode(mode, args)
        runs.append(r)
        print("    accuracy " + " ".join(f"{e['step']}:{e['accuracy']:.3f}" for e in r["evals"]), flush=True)
    rows = rows_of(runs)
    print()
    print(f"quickstart, lr {args.lr:g}, {args.steps} steps, seed {args.seed}: held-out greedy accuracy "
          f"(gap to fp32 at the same step in points)")
    print(text_table(rows, COLUMNS))
    for line in findings({"rows": rows}):
        print(line)
    path = write_result(args.out, {"machine": machine, "benchmark": "precision",
                                   "config": str(args.config.resolve().relative_to(ROOT)), "overrides": args.set,
                                   "lr": args.lr, "steps": args.steps, "eval_every": args.eval_every,
                                   "seed": args.seed, "runs": runs, "rows": rows, "wall_s": time.time() - started})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
