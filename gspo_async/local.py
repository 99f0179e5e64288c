"""`gspo-async local`: one learner and N actors on this machine, each a real process on loopback.

The learner's progress lines stream to this terminal; each actor logs to ``<run_dir>/logs/<actor>.log``. When the
learner finishes, the actors are stopped with SIGTERM (they push what they generated and return their leases)
and the run's summary is printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gspo_async.config import Config


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_local(cfg: Config, resume: bool = False) -> int:
    from gspo_async.bootstrap import ensure_model

    for key, value in _child_env().items():  # the model build below runs in this process
        os.environ.setdefault(key, value)
    run_dir = Path(cfg.run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    ensure_model(cfg)  # once, here, before any child starts
    host = cfg.learner.host
    port = cfg.learner.port
    if not port or not port_is_free(host, port) or not port_is_free(host, cfg.weight_store_port):
        port = free_port(host)
    store_port = cfg.learner.weight_store_port or free_port(host)
    cfg = cfg.model_copy(deep=True)
    cfg.learner.port = port
    cfg.learner.weight_store_port = store_port
    resolved = run_dir / "local-config.yaml"
    resolved.write_text(cfg.to_yaml())

    env = _child_env()
    cmd = [sys.executable, "-m", "gspo_async", "learner", str(resolved)]
    if resume:  # the run's saved settings, on this launch's ports; a first launch starts the run
        cmd += ["--resume", "--start-if-missing", f"learner.port={port}", f"learner.weight_store_port={store_port}"]
    print(f"[local] learner: {' '.join(cmd)}", flush=True)
    learner = subprocess.Popen(cmd, env=env)
    actors: list[tuple[str, subprocess.Popen]] = []
    for i in range(cfg.local.num_actors):
        actor_id = f"actor-{i}"
        log = open(run_dir / "logs" / f"{actor_id}.log", "ab")
        acmd = [sys.executable, "-m", "gspo_async", "actor", "--learner", f"{host}:{port}", "--id", actor_id]
        print(f"[local] {actor_id}: {' '.join(acmd)} (log: {run_dir / 'logs' / (actor_id + '.log')})", flush=True)
        actors.append((actor_id, subprocess.Popen(acmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
    interrupted = False

    def _terminate(_signum, _frame):  # SIGTERM to the launcher stops the whole local fleet like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        rc = learner.wait()
    except KeyboardInterrupt:
        interrupted = True
        learner.send_signal(signal.SIGTERM)
        rc = learner.wait()
    for _, proc in actors:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for actor_id, proc in actors:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"[local] {actor_id} did not stop in 60 s; killing it", flush=True)
            proc.kill()
            proc.wait()
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        accuracy = (f", held-out accuracy {s['start_accuracy']:.3f} -> {s['final_accuracy']:.3f}"
                    if s.get("start_accuracy") is not None else "")  # evaluation off: nothing to show
        print(f"[local] summary: {s['steps']} steps{accuracy}, {time.time() - t_start:.0f}s in all (model build "
              "included)", flush=True)
        print(f"[local] metrics: {run_dir / 'metrics.jsonl'}  checkpoints: {run_dir / 'checkpoints'}  "
              f"dashboard: gspo-async dashboard {run_dir}  report: gspo-async report {run_dir}", flush=True)
    return 130 if interrupted else rc
