"""Benchmark of evaluation on the fleet: does held-out evaluation served by the actors keep the learner busy?

The quickstart system end to end (the processes ``gspo-async local`` starts: one learner, two transformers actors)
on configs/quickstart.yaml with a shorter step budget, in two modes that differ only in evaluation:

  off    learner.eval_every 0: no evaluation at all
  fleet  learner.eval_on fleet, learner.eval_every E: the actors answer evaluation rounds for versions 0, E, 2E, ...
         between their training batches; the learner keeps training

Measured from each run's metrics.jsonl: the learner's busy fraction, the sum of ``train/step_s`` (train, publish
and weight sync) of steps 2..N over the wall time from the end of step 1 to the end of step N (the first step's wait
holds the actors' start-up, which varies by seconds between runs), and, for fleet, the versions whose evaluation was
recorded (summary.json ``eval_accuracy_by_version``). The modes run alternately (off, fleet, off, fleet, ...) so that load
from other processes on a shared machine falls on both; the machine's load average is recorded with every run.

Acceptance (issue: evaluation on the fleet): every configured version evaluated, and the mean busy fraction of
fleet within 5 points of off.

    PYTHONPATH=. python tools/bench/fleet_eval.py                  # 2 pairs of 100-step runs, eval every 25
    PYTHONPATH=. python tools/bench/fleet_eval.py --pairs 1 --steps 60 --eval-every 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import machine_info, markdown_table, text_table, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "tools" / "bench" / "results" / "fleet_eval.json"
WORKDIR = ROOT / "runs" / "bench" / "fleet_eval"
MODES = {"off": ["learner.eval_every=0"], "fleet": ["learner.eval_on=fleet"]}
TOLERANCE = 0.05  # busy fraction points


def run_one(mode: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the quickstart system in `mode`; returns its busy fraction and evaluated versions."""
    from tools.bench.pipeline import launch

    load = os.getloadavg()[0]
    overrides = [f"learner.total_steps={args.steps}", f"learner.eval_every={args.eval_every}",
                 "learner.checkpoint.every=0", "telemetry.dashboard_port=null", *MODES[mode]]
    run = launch(f"{mode}-{index}", overrides, engine="hf", actors=2, settings=None,
                 base_config=ROOT / "configs" / "quickstart.yaml", timeout_s=args.timeout, workdir=WORKDIR)
    return {"mode": mode, "index": index, "load_before": load, "wall_s": run["wall_s"], **measure(run["run_dir"])}


def measure(run_dir: Path) -> dict[str, Any]:
    from gspo_async.telemetry.registry import read_metrics

    steps: dict[int, dict] = {}
    for r in read_metrics(run_dir):
        if r.get("role") == "learner" and r.get("step", 0) >= 1 and "learner/wait_s" in r:
            steps.setdefault(r["step"], r)  # the record written right after the step
    if not steps:
        raise RuntimeError(f"{run_dir}: the learner logged no optimiser step")
    last = max(steps)
    if last < 2:
        raise RuntimeError(f"{run_dir}: fewer than 2 steps; the busy fraction is measured from the end of step 1")
    busy_s = sum(steps[k]["train/step_s"] for k in range(2, last + 1) if k in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"steps": last, "busy_frac": busy_s / (steps[last]["time"] - steps[1]["time"]),
            "evaluated_versions": [int(v) for v, _ in summary.get("eval_accuracy_by_version", [])],
            "eval_accuracy": [[int(v), float(a)] for v, a in summary.get("eval_accuracy_by_version", [])]}


COLUMNS = [("mode", "mode", None), ("runs", "runs", "d"), ("busy", "busy %", ".1f"),
           ("versions", "evaluated versions", None), ("load", "mean load average", ".1f")]


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mode: runs, mean busy fraction (percent), whether every expected version was evaluated."""
    runs = result["runs"]
    all_versions = all(r["evaluated_versions"] == result["expected_versions"] for r in runs if r["mode"] == "fleet")
    return [{"mode": m, "runs": sum(r["mode"] == m for r in runs), "busy": 100 * result["busy_frac"][m],
             "versions": "-" if m == "off" else ("all" if all_versions else "MISSING"),
             "load": statistics.fmean(r["load_before"] for r in runs if r["mode"] == m)} for m in MODES]


def verdict(result: dict[str, Any]) -> str:
    return (f"busy gap (off - fleet): {result['busy_gap_points']:.1f} points (tolerance {100 * TOLERANCE:.0f}); "
            f"expected versions {result['expected_versions']}: "
            f"{'all recorded' if table_rows(result)[1]['versions'] == 'all' else 'NOT all recorded'}; "
            f"{'PASS' if result['pass'] else 'FAIL'}")


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """The fleet-evaluation section of docs/benchmarks.md."""
    return "\n".join([
        f"The quickstart system (a learner and two transformers actors), {result['steps']} steps per run, with "
        f"evaluation off and with `learner.eval_on: fleet` every {result['eval_every']} steps (the actors answer "
        "the evaluation rounds between training batches), alternating. Busy is the learner's training time over "
        "steps 2..N divided by the wall time from the end of step 1.", "",
        markdown_table(table_rows(result), COLUMNS), "", f"- {verdict(result)}.",
        "- The quickstart is learner-bound (busy near 100% in both modes): evaluation costs actor time, which the "
        "group buffer absorbs here; an actor-bound run would show that cost and this benchmark does not."])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    machine = machine_info()
    runs = []
    for i in range(args.pairs):
        for mode in MODES:
            start = time.time()
            runs.append(run_one(mode, i, args))
            r = runs[-1]
            print(f"  {mode} #{i}: busy {100 * r['busy_frac']:.1f}% over {r['steps']} steps, evaluated versions "
                  f"{r['evaluated_versions']} ({time.time() - start:.0f}s, load {r['load_before']:.1f})", flush=True)
    expected = sorted({0, *range(args.eval_every, args.steps + 1, args.eval_every), args.steps})
    busy = {mode: statistics.fmean(r["busy_frac"] for r in runs if r["mode"] == mode) for mode in MODES}
    gap = busy["off"] - busy["fleet"]
    all_versions = all(r["evaluated_versions"] == expected for r in runs if r["mode"] == "fleet")
    result = {"machine": machine, "steps": args.steps, "eval_every": args.eval_every, "expected_versions": expected,
              "runs": runs, "busy_frac": busy, "busy_gap_points": 100 * gap,
              "pass": bool(all_versions and abs(gap) <= TOLERANCE),
              "note": "a shared machine: other processes' load falls on both modes (they alternate); see "
                      "load_before of each run"}
    print(text_table(table_rows(result), COLUMNS))
    print(verdict(result))
    print(f"wrote {write_result(args.out, result)}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
