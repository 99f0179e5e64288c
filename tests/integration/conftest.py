"""Real learner and actor processes on loopback, and the small tools to watch them without sleeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.support.ports import free_port  # noqa: F401 - re-exported for the tests that import it here
from tests.support.warm import start_role

ROOT = Path(__file__).resolve().parents[2]


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped (state T in /proc). SIGSTOP takes effect asynchronously: one
    thread must be scheduled to start the group stop, and on a loaded machine the others (a socket thread) run on
    meanwhile, so a test that needs the process frozen waits for this."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):  # a thread that ended meanwhile
            continue
    return bool(states) and all(state in ("T", "t") for state in states)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, procs: tuple = ()) -> object:
    """Poll `predicate` until truthy; fail with `what` after `timeout_s` or if a watched process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args} exited with {p.returncode} first")
        time.sleep(0.1)  # polling interval, not synchronisation: the condition is re-checked
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def stop_processes(procs: list, timeout_s: float) -> None:
    """SIGTERM each of `procs` still running, then wait up to `timeout_s` for each and SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


# What the fleet tests count (prompts trained per step, drop reasons, staleness) was designed around these two
# settings; the quickstart config they start from tunes them for learning speed instead (groups with equal rewards
# filtered, one version of lag). A test's own overrides come after these and win. The filtered path has its own
# tests (test_long_responses.py, the README quickstart).
TEST_BASE = ["filter_groups.enabled=false", "off_policy.max_staleness=2"]


class Cluster:
    """Starts learner and actor processes for one test and cleans them up."""

    def __init__(self, tmp: Path, model_dir: Path, overrides: list[str]):
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.port = free_port()
        self.store_port = free_port()
        self.overrides = [f"model.path={model_dir}", f"run_dir={self.run_dir}", f"learner.port={self.port}",
                          f"learner.weight_store_port={self.store_port}", "model.build_tiny_if_missing=false",
                          *TEST_BASE, *overrides]
        self.procs: list[subprocess.Popen] = []
        self.names: dict[subprocess.Popen, str] = {}  # the processes _start started -> their names
        self.logs: dict[str, Path] = {}
        # DEBUG: the actors log the checksum of every weight version they apply, which the tests compare
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                        GSPO_LOG_LEVEL="DEBUG")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        """``python -m gspo_async ARGS``, forked warm (tests/support/warm.py), its output in ``NAME.log``."""
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        proc = start_role(args, ROOT, self.env, log)
        self.procs.append(proc)
        self.names[proc] = name
        return proc

    def learner(self, *extra: str) -> subprocess.Popen:
        return self._start("learner", ["learner", str(ROOT / "configs/quickstart.yaml"), *self.overrides, *extra])

    def actor(self, actor_id: str) -> subprocess.Popen:
        return self._start(actor_id, ["actor", "--learner", f"127.0.0.1:{self.port}", "--id", actor_id])

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    def metrics(self) -> list[dict]:
        return read_jsonl(self.run_dir / "metrics.jsonl")

    def trained_steps(self) -> int:
        return max((int(r.get("step", 0)) for r in self.metrics()), default=0)

    def stop_all(self) -> None:
        """SIGTERM every process still running, the actors before the learner: an actor told to stop while its
        learner still answers gets its last acknowledgements at once, instead of waiting out a learner gone silent."""
        learners = [p for p in self.procs if self.names.get(p) == "learner"]
        stop_processes([p for p in self.procs if p not in learners], timeout_s=30)
        stop_processes(learners, timeout_s=30)

    def dump_logs(self) -> str:
        """Each log's tail, and its first traceback when the tail no longer holds it (the first failure is the
        cause; what follows, such as a second rank's broken connection, is its consequence)."""
        parts = []
        for name in self.logs:
            text = self.log(name)
            first = text.find("Traceback")
            head = (f"(first traceback)\n{text[first:first + 3000]}\n(tail)\n"
                    if 0 <= first < len(text) - 3000 else "")
            parts.append(f"===== {name}\n{head}{text[-3000:]}")
        return "\n".join(parts)


@pytest.fixture
def cluster_factory(tmp_path, tiny_model_dir):
    made: list[Cluster] = []

    def make(overrides: list[str]) -> Cluster:
        c = Cluster(tmp_path, tiny_model_dir, overrides)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()
