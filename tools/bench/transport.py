"""Benchmark of the rollout path: the full protocol against raw ZeroMQ PUSH/PULL of the same bytes.

  protocol  ActorClient.push (check, encode, send) -> LearnerServer (decode, validate, de-duplicate, buffer, ack)
            -> ActorClient ack handling, while the learner's main thread takes the groups (take_groups +
            mark_trained). Time: first push to last ack, measured by the sender.
  raw       the same encoded frames over a PUSH -> PULL pair, nothing decoded. Time: first send (sender clock)
            to last receive (receiver clock; same host).
Group sizes: small (G=8, 64 response tokens) and large (G=16, 4096 response tokens); each with and without
CURVE. Sender and receiver are separate processes. The figure is the median over --repeats runs; MB/s counts
the encoded message bytes. Writes a JSON file (--out).

    PYTHONPATH=. python tools/bench/transport.py            # about a minute on 2 cores
    PYTHONPATH=. python tools/bench/transport.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from gspo_async.protocol.codec import encode
from gspo_async.protocol.messages import Limits, Response, RolloutGroup

VOCAB = 32000
PROMPT_TOKENS = 32
TIMEOUT_S = 120.0
SIZES = {"small": (8, 64, 4000), "large": (16, 4096, 400)}  # name: (G, response tokens, groups per run)


def responses(rng: np.random.Generator, g: int, n: int) -> list[Response]:
    return [Response.single_version(rng.integers(0, VOCAB, n, dtype=np.int32), -rng.random(n, dtype=np.float32),
                                    float(rng.random()), "length", 0) for _ in range(g)]


def make_group(i: int, prompt_id: int, prompt: np.ndarray, pool: list[list[Response]]) -> RolloutGroup:
    return RolloutGroup(f"bench:{prompt_id}:{i}", prompt_id, "bench", prompt, pool[i % len(pool)], {"gen_s": 1.0})


def limits(g: int, n: int) -> Limits:
    return Limits(vocab_size=VOCAB, max_prompt_tokens=PROMPT_TOKENS, max_response_tokens=n, group_size=g)


# ----------------------------------------------------------------------------------------------- raw PUSH/PULL
def raw_receiver(port_q, result_q, n_msgs: int, keys) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    if keys:
        sock.curve_secretkey, sock.curve_publickey = keys["server_secret"], keys["server_public"]
        sock.curve_server = True
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_q.put(port)
    sock.recv_multipart()  # the warm-up message: the connection and its handshake are done
    result_q.put("ready")
    for i in range(n_msgs):
        sock.recv_multipart(copy=False)
    result_q.put(time.time())
    ctx.destroy(linger=0)


def run_raw(g: int, n: int, count: int, keys) -> tuple[float, int]:
    spawn = mp.get_context("spawn")
    port_q, result_q = spawn.Queue(), spawn.Queue()
    proc = spawn.Process(target=raw_receiver, args=(port_q, result_q, count, keys))
    proc.start()
    rng = np.random.default_rng(0)
    pool = [responses(rng, g, n) for _ in range(8)]
    prompt = rng.integers(0, VOCAB, PROMPT_TOKENS, dtype=np.int32)
    messages = [encode(make_group(i, i, prompt, pool)) for i in range(count)]
    nbytes = sum(sum(memoryview(f).nbytes for f in m) for m in messages)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    if keys:
        sock.curve_secretkey, sock.curve_publickey = keys["client_secret"], keys["client_public"]
        sock.curve_serverkey = keys["server_public"]
    sock.connect(f"tcp://127.0.0.1:{port_q.get(timeout=TIMEOUT_S)}")
    sock.send(b"")  # warm-up: the clock starts once the connection is up, as in the protocol run
    assert result_q.get(timeout=TIMEOUT_S) == "ready"
    t0 = time.time()
    for frames in messages:
        sock.send_multipart(frames, copy=False)
    t_last = result_q.get(timeout=TIMEOUT_S)
    proc.join(TIMEOUT_S)
    ctx.destroy(linger=0)
    return t_last - t0, nbytes


# -------------------------------------------------------------------------------------------- full protocol
def protocol_receiver(port_q, done_q, g: int, n: int, count: int, key_dir) -> None:
    from gspo_async.learner.coordinator import Coordinator
    from gspo_async.learner.prompts import PromptSource
    from gspo_async.protocol.auth import CurveServerKeys
    from gspo_async.learner.endpoint import LearnerServer

    prompt = np.random.default_rng(0).integers(0, VOCAB, PROMPT_TOKENS, dtype=np.int32)
    coord = Coordinator(PromptSource([(i, prompt, "", {}) for i in range(count)]), groups_per_step=count,
                        group_size=g, max_staleness=0, lease_timeout_s=600, heartbeat_timeout_s=60,
                        max_buffered_groups=count)
    curve = CurveServerKeys.load(Path(key_dir) / "server.key_secret") if key_dir else None
    server = LearnerServer(coord, limits=limits(g, n), curve=curve)
    server.start()
    port_q.put(server.port)
    taken, deadline = 0, time.monotonic() + TIMEOUT_S
    while taken < count and time.monotonic() < deadline:
        groups = server.take_groups(count - taken, timeout_s=0.5)
        server.mark_trained(groups)
        taken += len(groups)
    done_q.put(server.counters())
    server.close()


def run_protocol(g: int, n: int, count: int, key_dir) -> tuple[float, int, dict]:
    from gspo_async.protocol.auth import CurveClientKeys
    from gspo_async.protocol.client import ActorClient

    spawn = mp.get_context("spawn")
    port_q, done_q = spawn.Queue(), spawn.Queue()
    proc = spawn.Process(target=protocol_receiver, args=(port_q, done_q, g, n, count, key_dir))
    proc.start()
    curve = CurveClientKeys.load(Path(key_dir) / "client0.key_secret") if key_dir else None
    client = ActorClient(f"127.0.0.1:{port_q.get(timeout=TIMEOUT_S)}", "bench", engine="bench", curve=curve)
    client.connect(TIMEOUT_S)
    leases = []
    while len(leases) < count:
        got = client.lease(min(1024, count - len(leases)), timeout_s=TIMEOUT_S)
        if not got:
            raise RuntimeError(f"the learner stopped leasing at {len(leases)} prompts ({client.last_lease_reason})")
        leases += got
    rng = np.random.default_rng(0)
    pool = [responses(rng, g, n) for _ in range(8)]
    groups = [make_group(i, lease.prompt_id, lease.tokens, pool) for i, lease in enumerate(leases)]
    nbytes = sum(sum(memoryview(f).nbytes for f in encode(grp)) for grp in groups)
    t0 = time.time()
    for grp in groups:
        client.push(grp)
    if not client.wait_acked(TIMEOUT_S):
        raise RuntimeError(f"{client.unacked()} groups not acknowledged within {TIMEOUT_S} s")
    elapsed = time.time() - t0
    counters = done_q.get(timeout=TIMEOUT_S)
    client.close()
    proc.join(TIMEOUT_S)
    if counters["groups_accepted"] != count or counters["prompts_trained"] != count:
        raise RuntimeError(f"the learner accepted {counters['groups_accepted']} / trained "
                           f"{counters['prompts_trained']} of {count} groups")
    return elapsed, nbytes, {k: counters[k] for k in ("groups_accepted", "groups_retry_later", "messages_rejected")}


def keys_for(curve: bool, tmp: str) -> tuple[dict | None, str | None]:
    if not curve:
        return None, None
    from gspo_async.protocol.auth import CurveClientKeys, CurveServerKeys, generate_keys

    key_dir = Path(tmp) / "keys"
    if not key_dir.exists():
        generate_keys(key_dir)
    s, c = CurveServerKeys.load(key_dir / "server.key_secret"), CurveClientKeys.load(key_dir / "client0.key_secret")
    return ({"server_secret": s.secret, "server_public": s.public, "client_secret": c.secret,
             "client_public": c.public}, str(key_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tools/bench/results/transport.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the groups, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, (g, n, count) in SIZES.items():
            count = max(20, count // 10) if args.quick else count
            for curve in (False, True):
                keys, key_dir = keys_for(curve, tmp)
                proto = [run_protocol(g, n, count, key_dir) for _ in range(repeats)]
                raw = [run_raw(g, n, count, keys) for _ in range(repeats)]
                p_s, r_s = statistics.median(p[0] for p in proto), statistics.median(r[0] for r in raw)
                nbytes = proto[0][1]
                row = {"size": size, "group_size": g, "response_tokens": n, "groups": count, "curve": curve,
                       "bytes_per_group": nbytes / count,
                       "protocol_groups_per_s": count / p_s, "protocol_MB_per_s": nbytes / p_s / 1e6,
                       "raw_groups_per_s": count / r_s, "raw_MB_per_s": raw[0][1] / r_s / 1e6,
                       "protocol_over_raw": r_s / p_s, "protocol_runs_s": [p[0] for p in proto],
                       "raw_runs_s": [r[0] for r in raw], "learner_counters": proto[0][2]}
                rows.append(row)
                print(f"{size:5s} G={g:<2d} {n:4d} tok  curve={'on ' if curve else 'off'}  "
                      f"protocol {row['protocol_groups_per_s']:8.0f} groups/s {row['protocol_MB_per_s']:7.1f} MB/s | "
                      f"raw {row['raw_groups_per_s']:8.0f} groups/s {row['raw_MB_per_s']:7.1f} MB/s | "
                      f"protocol/raw {row['protocol_over_raw']:.2f}", flush=True)
    result = {"benchmark": "transport", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": repeats,
              "quick": args.quick, "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "platform": platform.platform(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
