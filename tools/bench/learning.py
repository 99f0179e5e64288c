"""Benchmark of learning: time to accuracy on the quickstart task, synchronous vs asynchronous, and GSPO's
sequence-level ratio vs the token-level (GRPO/PPO) ratio as staleness grows.

Every run is the real system end to end (the processes ``gspo-async local`` starts: one learner, two actors with
the transformers engine) on configs/quickstart.yaml with a shorter step budget; runs differ only in

  ratio      gspo  = importance_sampling seq,   clip 3e-4 / 4e-4 (the paper's GSPO ranges)
             token = importance_sampling token, clip 0.2 / 0.27  (the paper's GRPO baseline)
  staleness  off_policy.max_staleness 0 (synchronous), 2, 4 (asynchronous; the measured lag is reported)
  seed       seed and actor.seed (prompt order, sampling, initial optimiser state); the starting model is the same

From each run's metrics.jsonl: held-out greedy accuracy at every evaluation against wall time and step. Time to
accuracy = the first evaluation at or above the target (default: 80% of the way from the starting accuracy to the
mean final accuracy of synchronous GSPO). Stability: final and peak accuracy, the drop from peak to final, runs that
end below their start, and the clip fractions. Curves go to docs/img/ as PNG.

The default grid (2 ratios x 3 staleness levels x 4 seeds = 24 runs of 150 steps, about 40 s each, start-up
included) takes about 15 minutes on 2 cores; --quick about 2.5 minutes.

    PYTHONPATH=. python tools/bench/learning.py                       # default grid
    PYTHONPATH=. python tools/bench/learning.py --seeds 0,1,2,3 --steps 300 --staleness 0,1,2,4,8   # bigger
    PYTHONPATH=. python tools/bench/learning.py --quick                # 1 seed, staleness 0 and 4, 60 steps
    PYTHONPATH=. python tools/bench/learning.py --from-json            # re-aggregate and redraw from the JSON
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import (IMG, Column, load_result, machine_info, markdown_table, text_table,  # noqa: E402
                                write_result)

DEFAULT_OUT = ROOT / "tools" / "bench" / "results" / "learning.json"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
MODEL_DIR = ROOT / "runs" / "bench" / "tiny-model"
WORKDIR = ROOT / "runs" / "bench" / "learning"
RATIOS = {  # (runs start from tools.bench.report.SYSTEM_BENCH_BASE: no group filtering unless a ratio asks)
    "gspo": ["importance_sampling=seq", "pg_clip_low=0.0003", "pg_clip_high=0.0004"],
    "token": ["importance_sampling=token", "pg_clip_low=0.2", "pg_clip_high=0.27"],
}
# GSPO with dynamic sampling (filter_groups): the row "time to target with and without filtering", e.g.
#   --ratios gspo,gspo_filter --staleness 2 --seeds 0,1 --target 0.629 --out tools/bench/results/learning_filter.json
#   --img-dir runs/bench/learning_filter_img     (its own JSON and plots: the default grid's stay as they are)
RATIOS["gspo_filter"] = [*RATIOS["gspo"], "filter_groups.enabled=true"]
RATIO_LABELS = {"gspo": "GSPO (sequence ratio, clip 3e-4/4e-4)", "token": "token ratio (GRPO, clip 0.2/0.27)",
                "gspo_filter": "GSPO + filter_groups (zero-variance groups dropped)"}


# ----------------------------------------------------------------------------------------------- one run
def run_one(ratio: str, staleness: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the quickstart system once (learner + actor processes); returns its accuracy curve and figures."""
    from tools.bench.pipeline import launch

    start, load = time.time(), os.getloadavg()[0]
    overrides = [f"seed={seed}", f"actor.seed={seed}", f"learner.total_steps={args.steps}",
                 f"learner.eval_every={args.eval_every}", "learner.checkpoint.every=0", "telemetry.dashboard_port=null",
                 f"off_policy.max_staleness={staleness}", *RATIOS[ratio], *args.set]
    run = launch(f"{ratio}-s{staleness}-seed{seed}", overrides, engine="hf", actors=args.actors, settings=None,
                 base_config=args.config, timeout_s=args.timeout, workdir=WORKDIR)
    return {"ratio": ratio, "max_staleness": staleness, "seed": seed, **curve(run["run_dir"]),
            "wall_s": time.time() - start, "load_before": load}


def curve(run_dir: Path) -> dict[str, Any]:
    """Accuracy by (seconds since training began, step), and means of the training figures over the run.

    The evaluated steps and accuracies come from summary.json; each one's time is that of the learner's record
    for the step (written after the evaluation), counted from the end of the first optimiser step: the first
    step's wait holds the actors' start-up (imports, first weights), which varies by seconds between runs.
    """
    import json

    from gspo_async.telemetry.registry import read_metrics

    recs = [r for r in read_metrics(run_dir) if r.get("role") == "learner"]
    steps: dict[int, dict] = {}
    for r in recs:
        if r.get("step", 0) >= 1 and "learner/wait_s" in r:
            steps.setdefault(r["step"], r)  # the first record of a step is the one written right after it
    if 1 not in steps:
        raise RuntimeError(f"{run_dir}: the learner logged no optimiser step")
    t0 = steps[1]["time"]
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = [{"step": int(s), "time_s": 0.0 if int(s) == 0 else steps[int(s)]["time"] - t0, "accuracy": float(a)}
             for s, a in summary["eval_accuracy"] if int(s) == 0 or int(s) in steps]
    mean = lambda key: statistics.fmean(s[key] for s in steps.values() if key in s) if steps else None  # noqa: E731
    last = steps[max(steps)]
    return {"evals": evals, "steps_done": max(steps), "train_seconds": last["time"] - t0,
            "staleness_mean": mean("staleness/mean"), "clipfrac_mean": mean("train/clipfrac"),
            "clipfrac_seq_mean": mean("train/clipfrac_seq"), "reward_mean_last": last.get("reward/mean"),
            "dropped_stale": last.get("staleness/dropped", 0.0)}


# ----------------------------------------------------------------------------------------------- figures
DROP_AFTER_STEP = 100  # stability: the largest fall between consecutive evaluations from this step on
STABILITY_GOAL = 0.10  # ... at most this (ten points of accuracy)


def largest_drop(evals: list[dict], after_step: int = DROP_AFTER_STEP) -> Optional[float]:
    """The largest fall in accuracy from one evaluation to the next, among evaluations at or after `after_step`
    (0 when it never falls; None with fewer than two such evaluations)."""
    late = [e["accuracy"] for e in evals if e["step"] >= after_step]
    return max([0.0, *(a - b for a, b in zip(late, late[1:]))]) if len(late) > 1 else None


def time_to(evals: list[dict], target: float) -> tuple[Optional[float], Optional[int]]:
    """(seconds, step) of the first evaluation at or above `target` after the start; (None, None) if never."""
    for e in evals[1:]:
        if e["accuracy"] >= target:
            return e["time_s"], e["step"]
    return None, None


def aggregate(runs: list[dict], target: Optional[float], target_frac: float) -> tuple[list[dict], float, float]:
    """One row per (ratio, staleness) over seeds; returns (rows, target used, starting accuracy).

    Without a `target`: start + target_frac * (mean final accuracy of synchronous GSPO - start).
    """
    start_acc = statistics.fmean(r["evals"][0]["accuracy"] for r in runs)
    if target is None:
        sync = [r["evals"][-1]["accuracy"] for r in runs if r["ratio"] == "gspo" and r["max_staleness"] == 0]
        final = statistics.fmean(sync) if sync else max(r["evals"][-1]["accuracy"] for r in runs)
        target = start_acc + target_frac * (final - start_acc)
    rows = []
    for ratio in RATIOS:
        for k in sorted({r["max_staleness"] for r in runs}):
            cell = [r for r in runs if r["ratio"] == ratio and r["max_staleness"] == k]
            if not cell:
                continue
            hits = [time_to(r["evals"], target) for r in cell]
            reached = [h for h in hits if h[0] is not None]
            finals = [r["evals"][-1]["accuracy"] for r in cell]
            peaks = [max(e["accuracy"] for e in r["evals"]) for r in cell]
            rows.append({
                "ratio": ratio, "max_staleness": k, "seeds": len(cell),
                "reached": f"{len(reached)}/{len(cell)}",
                "time_to_target_s": statistics.median(h[0] for h in reached) if reached else None,
                "steps_to_target": statistics.median(h[1] for h in reached) if reached else None,
                "final_acc": statistics.fmean(finals), "final_acc_min": min(finals),
                # standard error over seeds: it holds both the evaluation's and the training's randomness
                "final_acc_se": statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else None,
                "peak_acc": statistics.fmean(peaks),
                "drop_from_peak": statistics.fmean(p - f for p, f in zip(peaks, finals)),
                "largest_drop": max((d for r in cell if (d := largest_drop(r["evals"])) is not None), default=None),
                "ended_below_start": sum(f < r["evals"][0]["accuracy"] for f, r in zip(finals, cell)),
                "staleness_mean": statistics.fmean(r["staleness_mean"] or 0 for r in cell),
                "clipfrac": statistics.fmean(r["clipfrac_mean"] or 0 for r in cell),
                "clipfrac_seq": statistics.fmean(r["clipfrac_seq_mean"] or 0 for r in cell),
                "steps_per_s": statistics.fmean((r["steps_done"] - 1) / max(r["train_seconds"], 1e-9) for r in cell),
            })
    sync_time = {r["ratio"]: r["time_to_target_s"] for r in rows if r["max_staleness"] == 0}
    for r in rows:
        base = sync_time.get(r["ratio"])
        r["speedup_vs_sync"] = base / r["time_to_target_s"] if base and r["time_to_target_s"] else None
    return rows, target, start_acc


COLUMNS: list[Column] = [
    ("ratio", "ratio", None), ("max_staleness", "max staleness", "d"), ("staleness_mean", "mean staleness", ".2f"),
    ("reached", "reached target", None), ("time_to_target_s", "time to target s", ".0f"),
    ("steps_to_target", "steps to target", ".0f"), ("speedup_vs_sync", "vs sync (time)", ".2f"),
    ("final_acc", "final acc", ".3f"), ("final_acc_se", "+- s.e.", ".3f"), ("final_acc_min", "worst seed", ".3f"),
    ("peak_acc", "peak acc", ".3f"),
    ("drop_from_peak", "peak - final", ".3f"),
    ("largest_drop", f"largest fall between evaluations from step {DROP_AFTER_STEP}", ".3f"),
    ("ended_below_start", "ended below start", "d"), ("clipfrac", "clipfrac tok", ".3f"),
    ("clipfrac_seq", "clipfrac seq", ".3f"), ("steps_per_s", "steps/s", ".2f")]


def plot(result: dict[str, Any], img_dir: Path = IMG) -> list[str]:
    """Accuracy against wall time and against step, one panel per ratio, one colour per staleness.

    Returns the PNG paths (relative to the repository root when inside it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    runs = result["runs"]
    colours = ["#2f6fd0", "#e08a00", "#d64545", "#1f9e6e", "#7b52c9", "#149a9a"]
    levels = sorted({r["max_staleness"] for r in runs})
    paths = []
    for axis, xlabel, name in (("time_s", "seconds since training began", "learning_time.png"),
                               ("step", "optimiser step", "learning_steps.png")):
        shown = [ratio for ratio in RATIOS if any(r["ratio"] == ratio for r in runs)]
        fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), sharey=True, squeeze=False)
        axes = axes[0]
        for ax, ratio in zip(axes, shown):
            for colour, k in zip(colours, levels):
                cell = [r for r in runs if r["ratio"] == ratio and r["max_staleness"] == k]
                for r in cell:  # each seed thin, the mean over seeds thick
                    ax.plot([e[axis] for e in r["evals"]], [e["accuracy"] for e in r["evals"]], color=colour,
                            alpha=0.25, lw=0.9)
                xs, ys = mean_curve(cell, axis)
                ax.plot(xs, ys, color=colour, lw=2.2, marker="o", ms=3,
                        label=f"max staleness {k}" + (" (sync)" if k == 0 else ""))
            ax.axhline(result["target"], color="grey", ls=":", lw=1)
            ax.set_title(RATIO_LABELS[ratio], fontsize=10)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("held-out greedy accuracy")
        axes[0].legend(fontsize=8, loc="lower right")
        seeds = sorted({r["seed"] for r in runs})
        fig.suptitle(f"Quickstart task: mean over {len(seeds)} seeds (thick), each seed (thin); dotted: target "
                     f"{result['target']:.3f}", fontsize=10)
        fig.tight_layout()
        path = img_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path))
    return paths


def mean_curve(cell: list[dict], axis: str) -> tuple[list[float], list[float]]:
    """Mean accuracy and mean `axis` value (step or time) at each evaluated step that every run of `cell` has."""
    common = sorted(set.intersection(*({e["step"] for e in r["evals"]} for r in cell))) if cell else []
    at = [{e["step"]: e for e in r["evals"]} for r in cell]
    return ([statistics.fmean(a[s][axis] for a in at) for s in common],
            [statistics.fmean(a[s]["accuracy"] for a in at) for s in common])


# ----------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="gspo,token", help=f"from {', '.join(RATIOS)}")
    ap.add_argument("--staleness", default="0,2,4", help="max_staleness values (0 = synchronous)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps per run")
    ap.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N steps")
    ap.add_argument("--target", type=float, default=None, help="accuracy target (default: see --target-frac)")
    ap.add_argument("--target-frac", type=float, default=0.8,
                    help="target = start + FRAC * (synchronous GSPO's mean final accuracy - start)")
    ap.add_argument("--actors", type=int, default=2, help="actor processes per run (the quickstart's 2)")
    ap.add_argument("--config", type=Path, default=BASE_CONFIG)
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every run")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--quick", action="store_true", help="1 seed, staleness 0 and 4, 60 steps")
    ap.add_argument("--from-json", action="store_true",
                    help="run nothing: recompute the table, target and plots from the runs stored in --out")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--img-dir", type=Path, default=IMG, help="where the PNG curves go")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.staleness, args.steps, args.eval_every = "0", "0,4", 60, 10
    ratios = args.ratios.split(",")
    if set(ratios) - set(RATIOS):
        ap.error(f"--ratios: unknown {sorted(set(ratios) - set(RATIOS))}; choose from {', '.join(RATIOS)}")

    if args.from_json:
        stored = load_result(args.out.stem, args.out.parent)
        if stored is None:
            ap.error(f"--from-json: no results at {args.out}")
        finish(stored, args)
        return 0

    from gspo_async.config import load_config
    from gspo_async.bootstrap import ensure_model

    machine = machine_info()
    started = time.time()
    ensure_model(load_config(args.config, args.set + [f"model.path={MODEL_DIR}"]))
    grid = [(ratio, int(k), int(seed)) for seed in args.seeds.split(",") for k in args.staleness.split(",")
            for ratio in ratios]
    runs = []
    for i, (ratio, k, seed) in enumerate(grid, 1):
        print(f"[{i}/{len(grid)}] {ratio} max_staleness {k} seed {seed} ...", flush=True)
        r = run_one(ratio, k, seed, args)
        runs.append(r)
        accs = " ".join(f"{e['accuracy']:.2f}" for e in r["evals"])
        print(f"    {r['steps_done']} steps in {r['train_seconds']:.0f}s, staleness {r['staleness_mean']:.2f}, "
              f"accuracy {accs}", flush=True)
    result = {"machine": machine, "benchmark": "learning", "config": str(args.config.resolve().relative_to(ROOT)),
              "overrides": args.set, "steps": args.steps, "eval_every": args.eval_every, "actors": args.actors,
              "seeds": args.seeds.split(","), "runs": runs, "wall_s": time.time() - started}
    finish(result, args)
    return 0


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Aggregate the runs of `result`, draw the curves, print the table and write the JSON."""
    rows, target, start_acc = aggregate(result["runs"], args.target, args.target_frac)
    synchronous = any(r["ratio"] == "gspo" and r["max_staleness"] == 0 for r in result["runs"])
    rule = ("given" if args.target is not None else
            f"start + {args.target_frac:g} x ("
            + ("synchronous GSPO's mean final accuracy" if synchronous else "the best final accuracy of these runs")
            + " - start)")
    result.update(target=target, target_rule=rule, start_accuracy=start_acc, rows=rows)
    result["plots"] = plot(result, args.img_dir)
    print()
    print(f"target accuracy {target:.3f} (start {start_acc:.3f})")
    print(text_table(rows, COLUMNS))
    path = write_result(args.out, result)  # a stored result keeps its machine and command line
    print(f"\nwrote {path} and {', '.join(result['plots'])}")


def findings(rows: list[dict]) -> list[str]:
    """Sentences comparing each ratio from the lowest to the highest staleness, from the aggregated rows."""
    by = {(r["ratio"], r["max_staleness"]): r for r in rows}
    levels = sorted({k for _, k in by})
    def secs(r: dict) -> str:
        return f"{r['time_to_target_s']:.0f} s" if r["time_to_target_s"] is not None else "not reached"

    out = []
    for ratio in RATIOS:
        cells = [by[(ratio, k)] for k in levels if (ratio, k) in by]
        if len(cells) < 2:
            continue
        lo, hi = cells[0], cells[-1]
        out.append(f"- {RATIO_LABELS[ratio]}: final accuracy {lo['final_acc']:.3f} at max staleness "
                   f"{lo['max_staleness']} and {hi['final_acc']:.3f} at {hi['max_staleness']} (mean lag "
                   f"{hi['staleness_mean']:.1f}; worst seed {hi['final_acc_min']:.3f}; "
                   f"{hi['ended_below_start']} run(s) "
                   f"ended below the start); clipped sequences {lo['clipfrac_seq']:.2f} -> {hi['clipfrac_seq']:.2f}, "
                   f"clipped tokens {lo['clipfrac']:.3f} -> {hi['clipfrac']:.3f}; time to target {secs(lo)} -> "
                   f"{secs(hi)} ({hi['steps_per_s']:.1f} vs {lo['steps_per_s']:.1f} steps/s).")
    for ratio in RATIOS:
        lo, hi = by.get((ratio, levels[0])), by.get((ratio, levels[-1]))
        if lo is None or hi is None or lo is hi or lo.get("final_acc_se") is None or hi.get("final_acc_se") is None:
            continue
        drop, se = lo["final_acc"] - hi["final_acc"], math.hypot(lo["final_acc_se"], hi["final_acc_se"])
        out.append(f"- {ratio}: from max staleness {levels[0]} to {levels[-1]} the mean final accuracy "
                   f"{'fell' if drop >= 0 else 'rose'} by {abs(drop):.3f} +- {se:.3f} (standard error over "
                   f"{lo['seeds']} seeds, evaluation and training noise together): "
                   f"{abs(drop) / max(se, 1e-9):.1f} standard errors.")
    for r in rows:
        if r.get("largest_drop") is not None:
            out.append(f"- {r['ratio']} at max staleness {r['max_staleness']}: the largest fall in held-out accuracy "
                       f"between consecutive evaluations from step {DROP_AFTER_STEP} on, over {r['seeds']} seeds, is "
                       f"{r['largest_drop']:.3f} (goal at most {STABILITY_GOAL:.2f}: "
                       f"{'met' if r['largest_drop'] <= STABILITY_GOAL else 'NOT met'}).")
    return out + ([""] if out else [])


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """The learning section of docs/benchmarks.md (image links relative to `doc_dir`)."""
    seeds = len(result.get("seeds", []))
    out = [f"The quickstart system end to end (the processes `gspo-async local` starts: a learner and "
           f"{result.get('actors', 2)} transformers actors) on `{result.get('config')}`, {result.get('steps')} steps "
           f"per run, held-out greedy accuracy on 200 prompts every {result.get('eval_every')} steps, {seeds} "
           f"seed{'s' if seeds != 1 else ''} per cell (same starting model). Starting accuracy "
           f"{result.get('start_accuracy', 0):.3f}; target {result.get('target', 0):.3f} "
           f"({result.get('target_rule')}). "
           "Time counts from the end of the first optimiser step (start-up left out) and includes the evaluations, "
           "which pause training in both modes (asynchronous actors keep generating during them). `vs sync (time)` "
           "compares time to target with the same ratio at max staleness 0.", "",
           markdown_table(result["rows"], COLUMNS), "", *findings(result["rows"])]
    for p in result.get("plots", []):
        out += [f"![{Path(p).stem}]({os.path.relpath(ROOT / p, doc_dir)})", ""]
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    sys.exit(main())
