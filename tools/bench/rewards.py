"""Benchmark of parallel reward scoring: responses scored per second against the number of worker processes.

A reward that takes 50 ms must not serialise a training batch. Two 50 ms rewards, each scoring one batch of
groups through `RewardRunner.score_groups` (the call an actor makes per generation batch):
  wait   50 ms of waiting (a sandbox, a remote judge, an API call): parallel beyond the CPU count
  cpu    50 ms of pure-Python computation: parallel up to the CPU count
workers 0 runs the function inline in the caller (no pool). The worker pool is started and warmed up (every
worker has imported the function) before the timed batch. Prints a table and writes JSON (--out).

    PYTHONPATH=. python tools/bench/rewards.py            # 64 x 8 responses, about 2 minutes on 2 cores
    PYTHONPATH=. python tools/bench/rewards.py --quick    # 16 x 8 responses, about 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gspo_async.tasks.scoring import RewardRunner  # noqa: E402

REWARD_S = 0.05


def wait_reward(prompt: str, response: str, answer: str) -> float:
    """50 ms of waiting, then exact match."""
    time.sleep(REWARD_S)
    return float(response == answer)


def cpu_reward(prompt: str, response: str, answer: str) -> float:
    """50 ms of computation (a busy loop), then exact match."""
    end = time.process_time() + REWARD_S
    x = 0
    while time.process_time() < end:
        x += 1
    return float(response == answer)


def measure(kind: str, workers: int, groups: int, group_size: int) -> dict[str, float]:
    """Seconds and responses/s for one batch of `groups` x `group_size` with `workers` processes."""
    batch = [(f"{g}+1=", [str(g + (i % 2)) for i in range(group_size)], str(g + 1), {}) for g in range(groups)]
    with RewardRunner(f"tools.bench.rewards:{kind}_reward", timeout_s=30, workers=workers) as runner:
        if workers:  # start every worker and import the function in each before timing
            runner.score_groups([("w", ["x"] * workers, "x", {})])
        t0 = time.perf_counter()
        scores = runner.score_groups(batch)
        seconds = time.perf_counter() - t0
        errors = sum(runner.errors.values())
    expected = [[float(i % 2 == 1) for i in range(group_size)] for _ in range(groups)]
    if [s.rewards for s in scores] != expected or errors:
        raise RuntimeError(f"{kind} with {workers} workers scored wrongly ({errors} errors)")
    n = groups * group_size
    return {"kind": kind, "workers": workers, "responses": n, "seconds": seconds, "responses_per_s": n / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 groups instead of 64")
    parser.add_argument("--groups", type=int, default=None)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "tools/bench/results/rewards.json"))
    args = parser.parse_args()
    groups = args.groups or (16 if args.quick else 64)
    plans = {"wait": [0, 1, 2, 4, 8, 16], "cpu": [0, 1, 2, 4]}
    rows = []
    print(f"reward of {REWARD_S * 1000:.0f} ms, one batch of {groups} x {args.group_size} responses, "
          f"{os.cpu_count()} CPUs")
    print(f"{'reward':<6} {'workers':>7} {'seconds':>8} {'responses/s':>12} {'speed-up':>9}")
    for kind, counts in plans.items():
        base = None
        for w in counts:
            r = measure(kind, w, groups if kind == "wait" else max(groups // 4, 4), args.group_size)
            base = base or r["responses_per_s"]
            r["speedup"] = r["responses_per_s"] / base
            rows.append(r)
            print(f"{kind:<6} {w:>7} {r['seconds']:>8.2f} {r['responses_per_s']:>12.1f} {r['speedup']:>8.1f}x",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "rewards", "reward_s": REWARD_S, "group_size": args.group_size,
                               "cpus": os.cpu_count(), "machine": platform.platform(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
