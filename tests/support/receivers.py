"""A receiving actor in its own process (tests/weights/receiver_proc.py: a real WeightSubscriber), for the weight-sync
tests of the publisher and of the learner's broadcaster."""

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "weights" / "receiver_proc.py"
TIMEOUT_S = 4.0  # the subscribers' (and their publishers') per-wait timeout in these tests (s)


class Receiver:
    """A receiving actor process; its JSON events are read by a thread into a queue."""

    def __init__(self, port: int, actor_id: str, timeout_s: float = TIMEOUT_S):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.actor_id = actor_id
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "127.0.0.1", str(port), actor_id, str(timeout_s)],
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next_event(self, timeout_s: float = 30.0) -> dict:
        try:
            return self.events.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"receiver {self.actor_id} said nothing for {timeout_s}s (exit code {self.proc.poll()})")

    def until_received(self, version: int) -> dict:
        """Skip failure reports; return the event for `version` (a later version is an error)."""
        while True:
            event = self.next_event()
            if event["event"] == "received":
                assert event["version"] == version, f"{self.actor_id} got {event['version']}, expected {version}"
                return event
            assert event["event"] == "failed", event

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
