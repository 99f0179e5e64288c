"""Drive a tests/support/fake_actor.py process from a test: one JSON command, one JSON answer."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]


class FakeActorProcess:
    """A fake actor in its own process. `call("lease", n=2)` sends a command and returns its answer (dict)."""

    def __init__(self, address: str, actor_id: str, *extra: str):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_actor", "--address", address, "--id", actor_id, *extra],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def call(self, cmd: str, timeout: float = 20.0, **kwargs: Any) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"fake actor gave no answer to {cmd!r} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake actor exited (code {self.proc.wait()}): {self.proc.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fake actor failed {cmd!r}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup (a crashed actor)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (a stuck or swapped-out actor); resume() continues it."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=5)
                self.proc.wait(timeout=5)
            except (TimeoutError, RuntimeError, BrokenPipeError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)
