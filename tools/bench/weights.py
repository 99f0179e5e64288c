"""Benchmark of the learner -> actor weight broadcast over gloo on one machine.

Compares, in one run and on the same receiver processes:
  raw flat        one pre-packed buffer per dtype, buffers reused on both sides (the transport's best case)
  raw flat fresh  the same, but receivers allocate new buffers every round (as the subscriber does)
  raw per-tensor  one broadcast per tensor, no packing
  publish <B>     the full WeightPublisher round (record, notify, pack into buckets of B, broadcast,
                  receive into fresh buffers, acknowledge); B = "per-tensor" (each tensor alone) or
                  "one per dtype" (a single flat bucket per dtype, packed every round)
over model sizes and 1..N receivers. Seconds are medians over --reps rounds after one warm-up round;
GB/s counts the payload one receiver gets. Writes a JSON file (--out).

    PYTHONPATH=. python tools/bench/weights.py            # default, about 2-3 minutes on 2 cores
    PYTHONPATH=. python tools/bench/weights.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from gspo_async.weights.buckets import plan_buckets
from gspo_async.weights.elastic import WeightPublisher, WeightSubscriber
from gspo_async.weights.groups import broadcast, make_group

TIMEOUT_S = 60.0
MiB = 1 << 20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synthetic_weights(n_params: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A decoder-shaped state dict of about `n_params` parameters: an embedding of ~20 % of them, then
    layers of attention (4 x h*h, q/k/v biases), MLP (3 x h*3h) and two norms until the budget is spent.
    Real checkpoints mix a few large matrices with many small vectors; so does this."""
    hidden = 256 if n_params < 5e6 else 384 if n_params < 20e6 else 512
    vocab = max(256, int(0.2 * n_params / hidden))
    g = torch.Generator().manual_seed(0)
    weights = {"embed.weight": torch.randn(vocab, hidden, generator=g).to(dtype)}
    total, layer = vocab * hidden, 0
    while total < n_params:
        p = f"layers.{layer}."
        shapes = {"ln1.weight": (hidden,), "attn.q.weight": (hidden, hidden), "attn.k.weight": (hidden, hidden),
                  "attn.v.weight": (hidden, hidden), "attn.o.weight": (hidden, hidden), "ln2.weight": (hidden,),
                  "attn.q.bias": (hidden,), "attn.k.bias": (hidden,), "attn.v.bias": (hidden,),
                  "mlp.gate.weight": (3 * hidden, hidden), "mlp.up.weight": (3 * hidden, hidden),
                  "mlp.down.weight": (hidden, 3 * hidden)}
        for name, shape in shapes.items():
            weights[p + name] = torch.randn(shape, generator=g).to(dtype)
            total += torch.Size(shape).numel()
        layer += 1
    return weights


def receiver_main(port: int, actor_id: str) -> None:
    """A receiver process: subscribes for publish rounds and obeys raw-broadcast commands."""
    torch.set_num_threads(1)
    subscriber = WeightSubscriber("127.0.0.1", port, actor_id, timeout_s=TIMEOUT_S, compute_checksum=False)

    def receive_forever() -> None:
        try:
            while subscriber.receive() is not None or not subscriber.stopped:
                pass
        except ConnectionError:
            pass

    rounds = threading.Thread(target=receive_forever)
    rounds.start()
    control = dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=3600))
    step = 0
    while True:
        cmd = json.loads(control.get(f"bench/cmd/{actor_id}/{step}"))
        step += 1
        if cmd["op"] == "stop":
            break
        members = cmd["members"]
        group = make_group("gloo", dist.PrefixStore(cmd["prefix"], control), members.index(actor_id) + 1,
                           len(members) + 1, TIMEOUT_S, torch.device("cpu"), "127.0.0.1")
        buffers = [torch.empty(n, dtype=getattr(torch, d)) for n, d in cmd["buffers"]]
        for _ in range(cmd["rounds"]):
            if cmd["fresh"]:
                buffers = [torch.empty_like(b) for b in buffers]
            works = [broadcast(group, b) for b in buffers]
            for w in works:
                w.wait()
            group.allreduce([torch.zeros(1)]).wait()  # marks the end of a round for the timer
        group.abort()
    subscriber.stop()
    rounds.join()
    subscriber.close()


class Bench:
    def __init__(self, n_receivers: int, reps: int):
        self.reps = reps
        self.publisher = WeightPublisher("127.0.0.1", 0, timeout_s=TIMEOUT_S, bucket_bytes=16 * MiB)
        self.actors = [f"r{i}" for i in range(n_receivers)]
        self.steps = {a: 0 for a in self.actors}
        self.raw_runs = 0
        self.control = dist.TCPStore("127.0.0.1", self.publisher.port, None, False, timedelta(seconds=TIMEOUT_S))
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=receiver_main, args=(self.publisher.port, a)) for a in self.actors]
        for p in self.procs:
            p.start()

    def _command(self, actor: str, cmd: dict) -> None:
        self.control.set(f"bench/cmd/{actor}/{self.steps[actor]}", json.dumps(cmd))
        self.steps[actor] += 1

    def raw(self, weights: dict[str, torch.Tensor], members: list[str], flat: bool, fresh: bool = False) -> list[float]:
        """Round times of raw broadcasts: pre-packed flat buffers per dtype, or one per tensor;
        receivers reuse their buffers unless `fresh` (then they allocate new ones every round)."""
        if flat:
            sends = []
            for b in plan_buckets(weights, 1 << 62):
                sends.append(torch.cat([weights[n].reshape(-1) for n in b.names]))
        else:
            sends = [t.reshape(-1) for t in weights.values()]
        self.raw_runs += 1
        prefix = f"bench/pg/{self.raw_runs}"
        cmd = {"op": "raw", "members": members, "prefix": prefix, "rounds": self.reps + 1, "fresh": fresh,
               "buffers": [[t.numel(), str(t.dtype).removeprefix("torch.")] for t in sends]}
        for a in members:
            self._command(a, cmd)
        group = make_group("gloo", dist.PrefixStore(prefix, self.control), 0, len(members) + 1,
                           TIMEOUT_S, torch.device("cpu"), "127.0.0.1")
        times = []
        for _ in range(self.reps + 1):
            t0 = time.perf_counter()
            works = [broadcast(group, t) for t in sends]
            for w in works:
                w.wait()
            group.allreduce([torch.zeros(1)]).wait()
            times.append(time.perf_counter() - t0)
        group.abort()
        return times[1:]

    def publish(self, weights: dict[str, torch.Tensor], members: list[str],
                bucket_bytes: int) -> tuple[list[float], float]:
        """Round times of full publishes, and the group-forming time of the warm-up round."""
        self.publisher.bucket_bytes = bucket_bytes
        times, group_s = [], 0.0
        for i in range(self.reps + 1):
            result = self.publisher.publish(weights, i, members)
            if not result.ok:
                raise RuntimeError(f"publish failed: {result.error}")
            group_s = max(group_s, result.group_seconds)
            times.append(result.seconds)
        return times[1:], group_s

    def close(self) -> None:
        for a in self.actors:
            self._command(a, {"op": "stop"})
        for p in self.procs:
            p.join(timeout=30)
        self.publisher.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,50", help="model sizes in millions of parameters, comma-separated")
    ap.add_argument("--receivers", default="1,2,3,4", help="receiver counts, comma-separated")
    ap.add_argument("--buckets-mb", default="1,4,16,64", help="bucket sizes in MiB for the publish rows")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds per row (after one warm-up)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--quick", action="store_true", help="tiny run: 2M params, 1-2 receivers, two bucket sizes")
    ap.add_argument("--out", default="tools/bench/results/weights.json")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.receivers, args.buckets_mb, args.reps = "2", "1,2", "1,4", 2
    sizes = [float(s) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.receivers.split(",")]
    if min(counts) < 1:
        sys.exit("--receivers: every count must be >= 1")
    sweep = [float(x) for x in args.buckets_mb.split(",")]
    buckets = ([("per-tensor", 1)] + [(f"{mb:g} MiB", int(mb * MiB)) for mb in sweep]
               + [("one per dtype", 1 << 62)])
    torch.set_num_threads(1)
    start = time.perf_counter()
    bench = Bench(max(counts), args.reps)
    rows = []
    try:
        for size in sizes:
            weights = synthetic_weights(int(size * 1e6), DTYPES[args.dtype])
            nbytes = sum(t.numel() * t.element_size() for t in weights.values())
            n_params = sum(t.numel() for t in weights.values())
            for n in counts:
                members = bench.actors[:n]
                cases = [("raw flat", None, bench.raw(weights, members, flat=True), 0.0),
                         ("raw flat fresh", None, bench.raw(weights, members, flat=True, fresh=True), 0.0),
                         ("raw per-tensor", None, bench.raw(weights, members, flat=False), 0.0)]
                for label, bb in buckets:
                    times, group_s = bench.publish(weights, members, bb)
                    cases.append(("publish", label, times, group_s))
                flat_s = statistics.median(cases[0][2])
                for method, bucket, times, group_s in cases:
                    s = statistics.median(times)
                    rows.append({"params_m": n_params / 1e6, "tensors": len(weights), "mb": nbytes / 1e6,
                                 "receivers": n,
                                 "method": method, "bucket": bucket, "seconds": s, "seconds_all": times,
                                 "gb_per_s": nbytes / s / 1e9, "s_per_gb": s / (nbytes / 1e9),
                                 "frac_of_flat": flat_s / s, "group_form_s": group_s})
                    print_row(rows[-1])
    finally:
        bench.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "dtype": args.dtype, "reps": args.reps, "wall_s": time.perf_counter() - start,
            "argv": sys.argv[1:]}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{len(rows)} rows in {meta['wall_s']:.0f}s -> {out}")


HEADER = (f"{'params':>7} {'MB':>7} {'recv':>4}  {'method':<16} {'bucket':<13} {'seconds':>8} {'GB/s':>6} "
          f"{'s/GB':>6} {'vs flat':>7}")


def print_row(r: dict) -> None:
    if not getattr(print_row, "started", False):
        print(HEADER)
        print_row.started = True
    print(f"{r['params_m']:>6.1f}M {r['mb']:>7.1f} {r['receivers']:>4}  {r['method']:<16} {r['bucket'] or '-':<13} "
          f"{r['seconds']:>8.4f} {r['gb_per_s']:>6.2f} {r['s_per_gb']:>6.2f} {r['frac_of_flat']:>7.2f}")


if __name__ == "__main__":
    main()
