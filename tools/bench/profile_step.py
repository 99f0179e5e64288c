"""Where a gspo-async step's time goes on this machine: the quickstart's processes (a learner and 2 transformers
actors, one thread each) run as ``gspo-async local`` starts them, each under cProfile, for a fixed number of steps;
the main thread of every process is then split into the parts of the pipeline.

    PYTHONPATH=. python tools/bench/profile_step.py                 # quickstart config, 200 steps
    PYTHONPATH=. python tools/bench/profile_step.py --set off_policy.correction=decoupled --tag decoupled

Learner (its main thread: the training loop; the ZeroMQ endpoint and the weight broadcaster run on their own
threads, which cProfile does not see, and their cost shows as time the loop waits):
  forward            trainer.response_logprobs (the training passes and any no-grad passes for pi_prox / pi_ref)
  backward           the engine's backward
  optimiser          the engine's step (gradient clipping, Adam, scheduler)
  rest of the step   the remainder of Trainer.train_step: collation, advantages, loss, metrics (Python)
  wait for groups    LearnerServer.take_groups: no full batch yet (the actors are the bottleneck while it grows)
  wait for weights   WeightBroadcaster.wait_sent: the fleet more than max_version_lag versions behind
  checkpoints, telemetry, bookkeeping: the rest of the loop
Actor (per actor, its main thread):
  generation         the engine's generate (prefill + sampling of a lease's prompts x group size)
  reward             RewardRunner.score_groups (in the reward worker pool)
  push               encode + send each group, acknowledgement bookkeeping (transport)
  weights            apply_pending_weights: receiving and loading new weights between batches
  wait for leases    Client.lease: admission closed (the learner is the bottleneck while it grows)
  other              the rest of the actor's loop, its start-up included (waiting for the learner's welcome,
                     building the engine: mostly imports of transformers)

cProfile adds per-call overhead to Python-heavy parts (the transformers forward calls many small modules), so the
table reports shares of each process's profiled wall time, and the steps/s of the profiled run beside an unprofiled
run of the same config in the same invocation (the overhead is their ratio).

Results: tools/bench/results/profile_step[-TAG].json and the table printed.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.report import Column, machine_info, markdown_table, text_table, write_result  # noqa: E402

WORK = ROOT / "runs" / "bench" / "profile_step"

# (part, [(file suffix, function name)]): the summed cumulative time of the named functions; the parts of one
# process do not nest in one another, except the train step's, whose remainder is "rest of the step"
LEARNER_PARTS = [
    ("forward", [("learner/trainer.py", "response_logprobs")]),
    ("backward", [("backends/torch_backend.py", "backward")]),
    ("optimiser", [("backends/torch_backend.py", "step")]),
    ("wait for groups", [("learner/endpoint.py", "take_groups")]),
    ("wait for weights", [("learner/broadcast.py", "wait_sent")]),
    ("checkpoints", [("learner/main.py", "checkpoint")]),
    ("telemetry", [("telemetry/registry.py", "log"), ("learner/main.py", "_log_progress"),
                   ("learner/main.py", "fleet_metrics")]),
]
TRAIN_STEP = ("train step", [("learner/trainer.py", "train_step")])
TRAIN_STEP_PARTS = ("forward", "backward", "optimiser")
ACTOR_PARTS = [
    ("generation", [("engines/hf.py", "generate")]),
    ("reward", [("tasks/scoring.py", "score_groups")]),
    ("push", [("actor/main.py", "_push")]),
    ("weights", [("actor/main.py", "apply_pending_weights")]),
    ("wait for leases", [("protocol/client.py", "lease")]),
]


def cumulative(stats: pstats.Stats, targets: list[tuple[str, str]]) -> float:
    """Summed cumulative seconds of the functions named by (file suffix, name)."""
    total = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(filename.endswith(suffix) and name == fn for suffix, fn in targets):
            total += ct
    return total


def split(profile: Path, parts: list[tuple[str, list[tuple[str, str]]]], whole: list[tuple[str, str]]
          ) -> dict[str, float]:
    """Seconds per part of one process's main thread, and under "total" those of `whole` (the role's run loop)."""
    stats = pstats.Stats(str(profile))
    return {**{name: cumulative(stats, targets) for name, targets in parts}, "total": cumulative(stats, whole)}


def run_once(args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    """One run of the config as is (tools.bench.pipeline.launch, none of the system benchmarks' base settings);
    its steps/s from the end of step 1 (start-up left out) and, when profiled, each process's parts."""
    from gspo_async.bootstrap import ensure_model
    from gspo_async.config import load_config
    from tools.bench.pipeline import MODEL_DIR, launch, step_records

    cfg = load_config(args.config, [f"model.path={MODEL_DIR}", *args.set])
    ensure_model(cfg)
    name = ("profiled" if profile else "plain") + (f"-{args.tag}" if args.tag else "")
    run = launch(name, [f"learner.total_steps={args.steps}", "learner.eval_every=0", "learner.checkpoint.every=0",
                        "telemetry.dashboard_port=null", *args.set], engine="hf", actors=cfg.local.num_actors,
                 settings=None, base_config=Path(args.config), timeout_s=args.steps * 10 + 300, workdir=WORK,
                 base_overrides=[], profile=profile)
    recs = step_records(run["run_dir"])
    first, last = recs[min(recs)], recs[max(recs)]
    result: dict[str, Any] = {"steps_per_s": (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)}
    if profile:
        run_dir = run["run_dir"]
        learner = split(run_dir / "learner.prof", LEARNER_PARTS + [TRAIN_STEP], [("learner/main.py", "run")])
        learner["rest of the step"] = learner.pop(TRAIN_STEP[0]) - sum(learner[k] for k in TRAIN_STEP_PARTS)
        learner["bookkeeping"] = learner["total"] - sum(v for k, v in learner.items() if k != "total")
        actors = [split(run_dir / f"actor-{i}.prof", ACTOR_PARTS, [("actor/main.py", "run")])
                  for i in range(cfg.local.num_actors)]
        for parts in actors:
            parts["other"] = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        result.update(learner=learner, actors=actors)
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    learner = result["profiled"]["learner"]
    steps = result["steps"]
    for part, seconds in learner.items():
        if part != "total":
            rows.append({"process": "learner", "part": part, "share": seconds / learner["total"],
                         "ms_per_step": 1000 * seconds / steps})
    actors = result["profiled"]["actors"]
    for part in actors[0]:
        if part != "total":
            seconds = sum(a[part] for a in actors) / len(actors)
            total = sum(a["total"] for a in actors) / len(actors)
            rows.append({"process": f"actor (mean of {len(actors)})", "part": part, "share": seconds / total,
                         "ms_per_step": 1000 * seconds / steps})
    return rows


COLUMNS: list[Column] = [("process", "process", None), ("part", "part", None),
                         ("share", "share of its wall time", ".1%"), ("ms_per_step", "ms per learner step", ".1f")]


def findings(result: dict[str, Any]) -> list[str]:
    plain, prof = result["plain"]["steps_per_s"], result["profiled"]["steps_per_s"]
    learner = result["profiled"]["learner"]
    compute = sum(learner[k] for k in ("forward", "backward", "optimiser", "rest of the step"))
    return [f"steps/s without the profiler {plain:.2f}, with it {prof:.2f} (x{prof / plain:.2f}: the profiler's "
            "overhead, mostly on the Python-heavy parts)",
            "the learner trains (forward + backward + optimiser + the rest of train_step) "
            f"{compute / learner['total']:.0%} of its wall time; it waits for groups "
            f"{learner['wait for groups'] / learner['total']:.0%} and for the fleet's weights "
            f"{learner['wait for weights'] / learner['total']:.0%}"]


def render_markdown(result: dict[str, Any], doc_dir: Path, before: dict[str, Any] | None = None) -> str:
    """The section: this run's table and findings; with `before` (the same script on older code) a column of the
    older milliseconds beside the new ones."""
    rows = table_rows(result)
    cols = list(COLUMNS)
    if before is not None:
        old = {(r["process"], r["part"]): r["ms_per_step"] for r in table_rows(before)}
        for r in rows:
            r["ms_before"] = old.get((r["process"], r["part"]))
        cols.append(("ms_before", "ms per step, before", ".1f"))
    lines = [f"The quickstart's processes (`{Path(result['args']['config']).name}`"
             + (f", {' '.join(result['args']['set'])}" if result['args']['set'] else "")
             + f"), {result['steps']} steps, each process's main thread under cProfile "
             "(`tools/bench/profile_step.py`; what each part covers is in the script's docstring)"
             + (f". Measured on {result['code']}." if result.get("code") else "."), ""]
    if before is not None:
        lines += [f"`before`: the same script on {before.get('code', 'older code')}, measured "
                  f"{before['machine']['time']}; steps/s without the profiler then "
                  f"{before['plain']['steps_per_s']:.2f}, now {result['plain']['steps_per_s']:.2f} (separate runs on a "
                  "shared machine: read the milliseconds of the parts that changed).", ""]
    lines += [markdown_table(rows, cols), ""]
    lines += [f"- {f}" for f in findings(result)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--set", nargs="*", default=[], help="config overrides (key=value)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tag", default="", help="suffix of the result's name (and of its run directories)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default tools/bench/results/profile_step"
                   "[-TAG].json)")
    args = p.parse_args()
    result = {"steps": args.steps, "plain": run_once(args, profile=False), "profiled": run_once(args, profile=True),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": machine_info()}
    print(text_table(table_rows(result), COLUMNS))
    for line in findings(result):
        print("-", line)
    write_result(args.out or ROOT / "tools" / "bench" / "results" / ("profile_step" + (f"-{args.tag}" if args.tag
                                                                                         else "") + ".json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
