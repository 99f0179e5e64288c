"""Learner and actor processes for the tests, forked from a warm server instead of started cold.

A cold ``python -m gspo_async learner|actor`` spends about 4 s of a core importing torch and transformers before it
does anything, and the integration and reliability tests start some ninety of them: on the 2-core machine that is
a third of the whole suite's CPU time (``GSPO_TEST_COLD_START=1`` and ``python tools/test_timing.py`` measure it).
multiprocessing's fork server imports those libraries once per pytest worker; each role is then a fork of it:

* a real process with its own pid, so signals, ``/proc`` (memory, thread states) and exit codes (negative for a
  signal) are what a cold start gives;
* its own sockets, files and threads, and its output appended to a log file, as the cold start's were;
* running the command line's own path, :func:`gspo_async.cli.entry`, with the same argv, working directory and
  environment (the server imports third-party libraries only; gspo_async is imported by the role itself).

What a user types stays cold: the README's commands, the launch scripts, the DeepSpeed ranks under torchrun and the
``gspo-async`` console script are started exactly as written by their tests.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy

ROOT = Path(__file__).resolve().parents[2]
COLD_ENV = "GSPO_TEST_COLD_START"
# What every role imports before its first useful line (third-party only; each fork shares these pages).
PRELOAD = ["numpy", "zmq", "yaml", "safetensors.torch", "torch", "torch.distributed", "transformers",
           "transformers.modeling_utils", "transformers.generation.utils", "transformers.models.auto.modeling_auto",
           "transformers.models.llama.modeling_llama", "transformers.tokenization_utils_fast"]

_context: Optional[multiprocessing.context.BaseContext] = None
_started: list["WarmProcess"] = []
_base_path: Optional[list[str]] = None


def cold() -> bool:
    """Whether roles start cold (``GSPO_TEST_COLD_START=1``)."""
    return os.environ.get(COLD_ENV) == "1"


def _server() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        atexit.register(_kill_leftovers)  # after multiprocessing's own handler registered: so it runs before it
        _context = context
    return _context


def _kill_leftovers() -> None:
    """A role a test left running would make multiprocessing's exit handler wait for it forever."""
    for proc in _started:
        proc.kill()
        proc.wait()


def _base_sys_path() -> list[str]:
    """sys.path of a fresh interpreter started without PYTHONPATH, less its first entry (the script's directory):
    the fork server's own path holds what pytest inserted for the tests."""
    global _base_path
    if _base_path is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], cwd="/",
                             env=env, capture_output=True, text=True, check=True, timeout=60)
        _base_path = json.loads(out.stdout)
    return _base_path


def _run(argv: list[str], cwd: str, env: dict[str, str], log_path: str, base_path: list[str]) -> None:
    """In the fork: what ``python -m gspo_async ARGV`` does, with stdout and stderr appended to `log_path`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Unbuffered, as PYTHONUNBUFFERED=1 makes the cold start: the tests read the logs while the roles run.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # The interpreter's start-up state that a cold start derives from its environment: the import path (the working
    # directory, then PYTHONPATH: a user's reward module lives there) and fresh global random states (`random`
    # reseeds itself in a fork; numpy's legacy generator does not).
    sys.path[:] = [cwd, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p], *base_path]
    importlib.invalidate_caches()
    numpy.random.seed()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [str(ROOT / "gspo_async" / "__main__.py"), *argv]
    from gspo_async.cli import entry

    entry()


class WarmProcess:
    """``python -m gspo_async ARGV`` as a fork of the warm server, with the part of :class:`subprocess.Popen`'s
    interface the tests use (pid, args, returncode, poll, wait, send_signal, terminate, kill)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path):
        self.args = [sys.executable, "-m", "gspo_async", *argv]
        log_path.touch()  # the file exists once started, as the cold start's redirected output does
        self.returncode: Optional[int] = None
        self._proc = _server().Process(target=_run, args=(list(argv), str(cwd), dict(env), str(log_path),
                                                          _base_sys_path()),
                                       name=f"gspo_async {' '.join(argv[:1])}")
        self._proc.start()
        self.pid: int = self._proc.pid
        _started.append(self)

    def poll(self) -> Optional[int]:
        if self.returncode is None and not self._proc.is_alive():
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_role(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path):
    """Start ``python -m gspo_async ARGV``: warm (a :class:`WarmProcess`), or cold (a :class:`subprocess.Popen`)
    under ``GSPO_TEST_COLD_START=1``. Output is appended to `log_path` either way."""
    if cold():
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "gspo_async", *argv], cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    return WarmProcess(argv, cwd, env, log_path)
