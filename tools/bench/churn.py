"""Benchmark of actor churn: does a dying actor stall training?

A real learner (``python -m gspo_async learner``, the quickstart's tiny model, default weight-sync and heartbeat
timeouts) and 16 simulated actors, each its own process (``python -m gspo_async.actor.swarm`` with one id), so
that killing one is a real SIGKILL of a real process. Two runs side by side in one invocation, each measured over
the same window after a warm-up:

  no kills   the fleet as started;
  kills      every ``--kill-every`` seconds one actor process (chosen at random among those that have connected)
             is SIGKILLed and a fresh one started at once under a new id, as a supervisor would;
  kills, inline broadcasts
             the same, with every step waiting for its own weight broadcast (learner.weight_sync.background=false);
  kills, one group for all
             the same as kills, with the whole fleet in one broadcast process group
             (learner.weight_sync.cohort_size=0) instead of groups of at most cohort_size actors;
  start-ups only
             no kills, but at the same pace an actor process is started that never joins (its learner address has
             nobody listening) and is killed at the next one: the CPU cost of a replacement's start-up (Python,
             torch, transformers) on a small machine, without any change of membership.

From the learner's metrics.jsonl over the window: the learner's busy fraction (1 - time waiting for data / time
between the first and last step of the window), the longest gap between two consecutive steps, steps per second,
and the failed weight-sync rounds. SIMULATED GENERATION: actors sleep by a cost model instead of generating.

    PYTHONPATH=. python tools/bench/churn.py                 # 5 x 2 minutes + start-ups, about 15 minutes
    PYTHONPATH=. python tools/bench/churn.py --window 30     # a quick pass
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gspo_async.config import WeightSyncConfig  # noqa: E402
from tools.bench.report import (SYSTEM_BENCH_BASE, Column, machine_info, markdown_table, text_table,  # noqa: E402
                                write_result)

DEFAULT_OUT = ROOT / "tools" / "bench" / "results" / "churn.json"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
MODEL_DIR = ROOT / "runs" / "bench" / "tiny-model"
WORKDIR = ROOT / "runs" / "bench" / "churn"
# Simulated generation: short lognormal responses at a cost that lets 16 actors outpace the learner, so the
# learner's waits come from the churn, not from a slow fleet.
SIMULATED = {"length_median": 6.0, "length_sigma": 0.5, "prefill_s": 0.05, "step_s": 0.02, "token_s": 0.0005}
OVERRIDES = ["learner.eval_every=0", "learner.checkpoint.every=0", "learner.total_steps=1000000",
             "telemetry.dashboard_port=null", "telemetry.log_every_s=1", "response_length=8",
             "actor.prompts_per_lease=2", "off_policy.max_staleness=2"]

COLUMNS: list[Column] = [("run", "run", None), ("actors", "actors", "d"), ("kills", "kills or start-ups", "d"),
                         ("steps", "steps", "d"), ("steps_per_s", "steps/s", ".2f"),
                         ("busy_pct", "learner busy %", ".1f"), ("longest_gap_s", "longest step gap s", ".2f"),
                         ("median_gap_s", "median step gap s", ".2f"), ("sync_failures", "failed syncs", "d"),
                         ("group_builds", "group builds", "d"),
                         ("data_wait_s", "waits for data s", ".1f"), ("weights_wait_s", "waits for weights s", ".1f"),
                         ("staleness_mean", "mean staleness", ".2f"),
                         ("absence_s", "kill to successor's weights s (median)", ".1f"),
                         ("actor_time_lost_pct", "actor time lost %", ".1f")]
# The runs of one invocation: (name, what happens every --kill-every seconds, config overrides). "inline" is the same
# churn with every step waiting for its own broadcast (learner.weight_sync.background=false); "start-ups" starts a
# process that never joins, to tell the cost of a start-up on the machine's cores from the cost of a membership change.
RUNS = [("no kills", None, ()), ("kills", "kill", ()),
        ("kills, inline broadcasts", "kill", ("learner.weight_sync.background=false",)),
        ("kills, one group for all", "kill", ("learner.weight_sync.cohort_size=0",)),
        ("start-ups only", "start-up", ())]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _step_records(run_dir: Path) -> dict[int, dict]:
    """The learner's record written right after each optimiser step (the first record carrying that step)."""
    from gspo_async.telemetry.registry import read_metrics

    out: dict[int, dict] = {}
    if not (run_dir / "metrics.jsonl").is_file():  # the learner has not logged yet
        return out
    for r in read_metrics(run_dir):
        if r.get("role") == "learner" and r.get("step", 0) >= 1 and r["step"] not in out and "learner/wait_s" in r:
            out[r["step"]] = r
    return out


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_once(name: str, *, actors: int, kill_every_s: float, window_s: float, warmup_steps: int,
             rng: random.Random, overrides: tuple[str, ...] = (), event: str = "kill") -> dict[str, Any]:
    """One learner and `actors` single-actor processes; every `kill_every_s` (> 0) during the window, an `event`:
    'kill' (one actor SIGKILLed and replaced) or 'start-up' (a process that never joins started, the previous one
    killed)."""
    from gspo_async.config import load_config
    from gspo_async.local import free_port

    run_dir = WORKDIR / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True)
    port, store_port = free_port(), free_port()
    cfg = load_config(BASE_CONFIG, SYSTEM_BENCH_BASE + OVERRIDES + list(overrides) + [
        f"run_dir={run_dir}", f"model.path={MODEL_DIR}", f"learner.port={port}",
        f"learner.weight_store_port={store_port}"])
    config_path = run_dir / "bench-config.yaml"
    config_path.write_text(cfg.to_yaml())
    address = f"127.0.0.1:{port}"
    logs: list = []

    def start(cmd: list[str], log_name: str) -> subprocess.Popen:
        log = open(run_dir / "logs" / log_name, "wb")
        logs.append(log)
        return subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def start_actor(actor_id: str, learner_address: str = address) -> subprocess.Popen:
        return start([sys.executable, "-m", "gspo_async.actor.swarm", "--learner", learner_address, "--ids",
                      actor_id, "--simulated", json.dumps(SIMULATED)], f"{actor_id}.log")

    learner = start([sys.executable, "-m", "gspo_async", "learner", str(config_path)], "learner.log")
    deadline = time.monotonic() + 600
    while b"listening on" not in (run_dir / "logs" / "learner.log").read_bytes():  # actors give up after 60 s
        if learner.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the learner did not start (log in {run_dir / 'logs'})")
        time.sleep(0.5)
    fleet = {f"c{i}": start_actor(f"c{i}") for i in range(actors)}
    next_id = actors
    decoys: list[subprocess.Popen] = []  # start-up processes that never join (event "start-up")
    kills = 0
    waiting: dict[str, float] = {}  # replacement -> time its predecessor was killed, until it applies weights
    absences: list[float] = []  # per kill: seconds from the kill to the replacement's first weights applied
    try:
        deadline = time.monotonic() + 600
        while len(_step_records(run_dir)) < warmup_steps:  # start-up: imports, registrations, first weights
            if learner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {warmup_steps} steps (learner log in {run_dir / 'logs'})")
            time.sleep(0.5)
        t0 = time.time()
        next_kill = t0 + kill_every_s if kill_every_s else float("inf")
        while time.time() < t0 + window_s:
            if learner.poll() is not None:
                raise RuntimeError(f"{name}: the learner exited with {learner.returncode}")
            for a in [a for a in waiting if b"applied version" in (run_dir / "logs" / f"{a}.log").read_bytes()]:
                absences.append(time.time() - waiting.pop(a))
            if time.time() >= next_kill:
                next_kill += kill_every_s
                if event == "start-up":  # the previous decoy goes, a new one starts (it never joins)
                    if decoys:
                        decoys[-1].send_signal(signal.SIGKILL)
                        decoys[-1].wait()
                    decoys.append(start_actor(f"decoy{len(decoys)}", f"127.0.0.1:{free_port()}"))
                    kills += 1
                elif connected := [a for a, p in fleet.items() if p.poll() is None
                                   and b"connected to" in (run_dir / "logs" / f"{a}.log").read_bytes()]:
                    victim = rng.choice(sorted(connected))
                    fleet[victim].send_signal(signal.SIGKILL)
                    waiting[f"c{next_id}"] = time.time()
                    fleet[victim].wait()
                    del fleet[victim]
                    kills += 1
                    fleet[f"c{next_id}"] = start_actor(f"c{next_id}")
                    next_id += 1
            time.sleep(0.05)
        t1 = time.time()
        absences += [t1 - t for t in waiting.values()]  # replacements not ready when the window closed
    finally:
        _stop([learner], grace_s=60)
        _stop(list(fleet.values()) + decoys, grace_s=10)
        for log in logs:
            log.close()
    row = summarise(name, run_dir, t0, t1, actors, kills)
    if absences:  # what the kills took from the fleet: an actor's absence, from its kill to its successor's weights
        row["absence_s"] = sorted(absences)[len(absences) // 2]
        row["actor_time_lost_pct"] = 100.0 * sum(min(a, t1 - t0) for a in absences) / (actors * (t1 - t0))
    return row


def summarise(name: str, run_dir: Path, t0: float, t1: float, actors: int, kills: int) -> dict[str, Any]:
    """Figures over the steps that ended inside [t0, t1] (the step before t0 anchors the first gap)."""
    recs = _step_records(run_dir)
    steps = sorted(recs)
    inside = [s for s in steps if t0 <= recs[s]["time"] <= t1]
    before = [s for s in steps if recs[s]["time"] < t0]
    if len(inside) < 2 or not before:
        raise RuntimeError(f"{name}: only {len(inside)} steps in the window; nothing to measure")
    chain = [before[-1]] + inside
    gaps = [recs[b]["time"] - recs[a]["time"] for a, b in zip(chain, chain[1:])]
    waits = sum(recs[s]["learner/wait_s"] for s in inside)
    weights_waits = sum(recs[s].get("weights/wait_s", 0.0) for s in inside)
    span = recs[chain[-1]]["time"] - recs[chain[0]]["time"]
    gaps_sorted = sorted(gaps)
    fail = lambda r: float(r.get("weights/failures", 0.0))  # noqa: E731
    builds = lambda r: float(r.get("weights/group_builds", 0.0))  # noqa: E731
    return {"run": name, "actors": actors, "kills": kills, "steps": len(inside), "window_s": t1 - t0,
            "steps_per_s": len(inside) / (t1 - t0), "busy_pct": 100.0 * (1.0 - waits / span),
            "longest_gap_s": max(gaps), "median_gap_s": gaps_sorted[len(gaps) // 2],
            "sync_failures": int(fail(recs[chain[-1]]) - fail(recs[chain[0]])),
            "group_builds": int(builds(recs[chain[-1]]) - builds(recs[chain[0]])),
            "staleness_mean": sum(recs[s].get("staleness/mean", 0.0) for s in inside) / len(inside),
            "max_wait_s": max(recs[s]["learner/wait_s"] for s in inside),
            # the learner's waits split: for the fleet's weights (the version-lag bound), and for rollouts
            "weights_wait_s": weights_waits, "data_wait_s": waits - weights_waits}


COHORT_SIZE = WeightSyncConfig().cohort_size  # the default the `kills` run uses
GOAL_BUSY_POINTS = 5.0  # the kills run's learner busy % within this many points of the run without kills
GOAL_GAP_S = 2.0  # and its longest gap between two steps below this (s, on loopback)


def goal_verdict(rows: list[dict[str, Any]]) -> str:
    """One line: whether the kills run meets the goal against the run without kills, with the figures."""
    by = {r["run"]: r for r in rows}
    calm, kills = by["no kills"], by["kills"]
    busy_drop = calm["busy_pct"] - kills["busy_pct"]
    ok_busy, ok_gap = busy_drop <= GOAL_BUSY_POINTS, kills["longest_gap_s"] < GOAL_GAP_S
    return (f"Goal (busy within {GOAL_BUSY_POINTS:g} points of the run without kills, longest step gap under "
            f"{GOAL_GAP_S:g} s): busy {busy_drop:+.1f} points lower ({'met' if ok_busy else 'NOT met'}), longest "
            f"gap {kills['longest_gap_s']:.2f} s ({'met' if ok_gap else 'NOT met'}); steps/s "
            f"{kills['steps_per_s']:.2f} vs {calm['steps_per_s']:.2f} "
            f"({100 * (kills['steps_per_s'] / calm['steps_per_s'] - 1):+.1f} %)."
            + (f" The kills took {kills['actor_time_lost_pct']:.1f} % of the fleet's actor time (median "
               f"{kills['absence_s']:.1f} s from a kill to its successor's first weights)."
               if "actor_time_lost_pct" in kills else "")
            + (f" The learner waited {kills['data_wait_s']:.1f} s for rollouts and {kills['weights_wait_s']:.1f} s "
               f"for the fleet's weights with kills, {calm['data_wait_s']:.1f} s and {calm['weights_wait_s']:.1f} s "
               "without." if "data_wait_s" in kills and "data_wait_s" in calm else ""))


def render_markdown(result: dict[str, Any], doc_dir: Path) -> str:
    """The churn section of docs/benchmarks.md."""
    s = result["settings"]
    load = result["machine"].get("load_average") or [float("nan")]
    return (f"{s['actors']} simulated actors, each its own process, against a real learner (quickstart model, "
            f"default `weight_sync.timeout_s` and `heartbeat_timeout_s`); in the `kills` run one actor process is "
            f"SIGKILLed every {s['kill_every_s']:g} s and replaced at once, for {s['window_s']:g} s after a warm-up "
            f"of {s['warmup_steps']} steps (`tools/bench/churn.py`). Broadcasts run on a thread of their own "
            "(`learner.weight_sync.background`, the default); `kills, inline broadcasts` is the same churn with each "
            "step waiting for its broadcast (`background: false`; its busy % counts the broadcast inside each step "
            "as busy, so compare steps/s); the broadcasts go to groups of at most `weight_sync.cohort_size` "
            f"actors (default {COHORT_SIZE}), and `kills, one group for all` is the same churn with "
            "`cohort_size: 0`, the whole fleet in one process group; `start-ups only` kills nobody but "
            "starts, at the same pace, an actor "
            "process that never joins: what a replacement's start-up costs the machine's cores without any change "
            "of membership. Group builds: broadcast process groups formed or tried in the window "
            "(`weights/group_builds`). The learner's waits in the window are split into waits for the fleet's "
            "weights (`weights/wait_s`, the version-lag bound) and waits for rollouts (the rest of "
            "`learner/wait_s`). Mean staleness: versions between a group's "
            f"weights and the learner's at training. SIMULATED GENERATION; 1-min load average {load[0]:.1f} on "
            f"{result['machine'].get('cpus')} cores at the start.\n\n" + markdown_table(result["rows"], COLUMNS)
            + "\n\n" + goal_verdict(result["rows"]) + "\n\n" + READING)


# How to read the table (no figure: those are above). Kept beside the code that measures it.
READING = ("Reading it: compare `start-ups only` with `no kills` for what the replacements' start-ups cost the "
           "cores, and `kills` with `start-ups only` for what the membership changes cost. Every change of a "
           "group's members makes a new process group (a gloo or NCCL group's members are fixed); while a round "
           "waits for it, that group's actors get no weights, and the fleet's version (the newest every group "
           "holds) stands still, and with it admission (counted from the fleet's version) and the version-lag "
           "bound (`weight_sync.max_version_lag`), so the learner may wait for data. With groups of "
           "`cohort_size`, a death rebuilds only its own group, and a replacement gets the weights at once in a "
           "small group of its own that joins a regular one at the next rebuild; `kills, one group for all` shows "
           "what one group for the whole fleet costs instead. Inline broadcasts pay the same group formations "
           "inside the steps. A killed actor's lost work and its successor's start-up cost rollouts too (`actor "
           "time lost %`: from each kill to the successor's first weights, over actors x window): where the fleet "
           "only just keeps up with the learner (the `no kills` run waits for data too), that shows as fewer "
           "steps/s however fast the broadcasts are. On a machine whose cores the learner shares with the fleet, "
           "busy % also rises when the learner's own steps are slowed by other processes, so read it beside "
           "steps/s.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, default=16)
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds between two kills")
    ap.add_argument("--window", type=float, default=120.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps before the window opens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-inline", action="store_true", help="skip the run with inline (step-blocking) broadcasts")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.actors < 2 or args.kill_every <= 0 or args.window <= args.kill_every:
        ap.error("need --actors >= 2, --kill-every > 0 and --window > --kill-every")

    from gspo_async.config import load_config
    from gspo_async.bootstrap import ensure_model

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    ensure_model(load_config(BASE_CONFIG, [f"model.path={MODEL_DIR}"]))
    result: dict[str, Any] = {"machine": machine_info(), "benchmark": "churn",
                              "settings": {"actors": args.actors, "kill_every_s": args.kill_every,
                                           "window_s": args.window, "warmup_steps": args.warmup,
                                           "simulated": SIMULATED, "overrides": OVERRIDES}, "rows": []}
    rng = random.Random(args.seed)
    for name, event, overrides in [r for r in RUNS if not (args.no_inline and "inline" in r[0])]:
        print(f"{name}: {args.actors} actors, {args.window:g} s window ...", flush=True)
        row = run_once(name.replace(" ", "-").replace(",", ""), actors=args.actors,
                       kill_every_s=args.kill_every if event else 0.0, window_s=args.window,
                       warmup_steps=args.warmup, rng=rng, overrides=overrides, event=event or "kill")
        row["run"] = name
        result["rows"].append(row)
    result["wall_s"] = time.time() - started
    print()
    print(text_table(result["rows"], COLUMNS))
    print(goal_verdict(result["rows"]))
    path = write_result(args.out, result)
    print(f"\nwrote {path} ({result['wall_s']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
