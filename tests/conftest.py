"""Shared test setup: offline hub, one thread per process, artifact directory, the two tiers, cached tiny models.

Two tiers: `bash tools/test.sh -m "not slow"` is the unit tier (no test in it starts a process; a guard below fails
one that does), `bash tools/test.sh` runs everything. Under pytest-xdist (`--dist loadgroup`) tests that start
processes run in two groups, one worker each, so that at most one multi-process run (a learner with its actors)
competes with the unit tests for the cores at any time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing.process
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# No hidden network, no thread oversubscription: every subprocess inherits these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")  # the W&B sink is tested offline: nothing leaves the machine
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

# ----- the two tiers -----------------------------------------------------------------------------------------------
# Process-starting tests run in two groups, one xdist worker each, so that two heavy runs never share the cores.
# "clusters": the fault-injection runs, the integration runs with timing bounds and the DeepSpeed engine tests;
# everything else slow goes to "processes" (reward runs, the README's commands, the dashboard's forced-drop run, which
# the browser and consistency tests share as a session fixture, so both must be on its worker). The split keeps the
# two groups' summed times close (measured with --junitxml on the 2-core machine, with warm role starts: clusters
# 160 s and processes 276 s before the DeepSpeed tests, 58 s, moved to clusters).
CLUSTER_PATHS = ("tests/reliability/", "tests/integration/test_training.py", "tests/integration/test_actor_kill.py",
                 "tests/integration/test_long_responses.py", "tests/integration/test_vllm_actor.py",
                 "tests/learner/test_deepspeed.py")
SPAWN_HINT = ("it is not marked slow but started a process ({what}); mark it @pytest.mark.slow (the unit tier, "
              "`-m 'not slow'`, starts no process) or replace the process with an in-process call")


class SpawnGuard:
    """Fails a test outside the `slow` tier that starts a process (subprocess, multiprocessing, fork, os.system).

    The process-starting primitives are wrapped once per session; while a non-slow test's setup, call or teardown
    runs, each start is recorded against the test and refused with an error naming the fix. The recorded starts
    fail the test's report even if the code under test caught the error."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.seen: dict[str, list[str]] = {}

    def check(self, what: str) -> None:
        item = self.item
        if item is None or item.get_closest_marker("slow") is not None:
            return
        self.seen.setdefault(item.nodeid, []).append(what)
        raise RuntimeError(SPAWN_HINT.format(what=what))

    def install(self) -> None:
        guard = self

        def wrap(owner: Any, name: str, describe: Callable[..., str]) -> None:
            original = getattr(owner, name)

            def guarded(*args: Any, **kwargs: Any) -> Any:
                guard.check(describe(*args, **kwargs))
                return original(*args, **kwargs)

            guarded.__wrapped__ = original  # type: ignore[attr-defined]
            setattr(owner, name, guarded)

        wrap(subprocess.Popen, "_execute_child", lambda self, args, *a, **k: f"subprocess {_short(args)}")
        wrap(multiprocessing.process.BaseProcess, "start", lambda self: f"multiprocessing {self.name}")
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            if hasattr(os, name):
                wrap(os, name, lambda *a, _n=name, **k: f"os.{_n} {_short(a[:2])}")


def _short(args: Any) -> str:
    text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
    return text if len(text) < 120 else text[:117] + "..."


GUARD = SpawnGuard()


def pytest_configure(config: pytest.Config) -> None:
    GUARD.install()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the process-starting tests for `--dist loadgroup` (runs before xdist reads the groups)."""
    for item in items:
        if item.get_closest_marker("slow") is None or item.get_closest_marker("xdist_group") is not None:
            continue
        path = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        heavy = path.startswith(CLUSTER_PATHS)
        item.add_marker(pytest.mark.xdist_group("clusters" if heavy else "processes"))


def _guarded_phase(item: pytest.Item):
    GUARD.item = item
    try:
        yield
    finally:
        GUARD.item = None


# Setup, call and teardown of every test: a module fixture set up for a unit test is checked too.
pytest_runtest_setup = pytest_runtest_call = pytest_runtest_teardown = pytest.hookimpl(hookwrapper=True)(
    _guarded_phase)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    starts = GUARD.seen.pop(item.nodeid, None)
    if starts and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: " + SPAWN_HINT.format(what="; ".join(starts))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """GSPO_REQUIRE_NO_SKIPS=1 (CI): a skipped test fails the run; every optional package is in the test extra."""
    if os.environ.get("GSPO_REQUIRE_NO_SKIPS") != "1" or hasattr(session.config, "workerinput"):
        return  # only the controlling process (not an xdist worker) has every report
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"GSPO_REQUIRE_NO_SKIPS=1: {len(skipped)} test(s) skipped; install what they name "
                            "(pip install -c constraints-cpu.txt -e '.[test]') or fix them", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ----- shared fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _console_logging_ends_with_the_test():
    """`setup_logging` (a role's main or the CLI, run in-process) puts console handlers on the `gspo_async` logger
    that write to whatever sys.stdout / sys.stderr are when a record is emitted. Left in place they would write a
    later test's log records into that test's captured output, so what a test sees would depend on which tests ran
    before it on the same worker: they are removed, and the level restored, after every test."""
    import logging

    logger = logging.getLogger("gspo_async")
    level = logger.level
    yield
    for handler in [h for h in logger.handlers if getattr(h, "_gspo_console", False)]:
        logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="session")
def artifact_dir() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def _source_digest() -> str:
    """A digest of the code a tiny-model build runs (bootstrap: build and warm-up; models, tasks, the HF engine) and
    of the library versions: a cached build is reused only while all of these are unchanged."""
    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    pkg = ROOT / "gspo_async"
    files = [*sorted((pkg / "bootstrap").glob("*.py")), *sorted((pkg / "models").glob("*.py")),
             *sorted((pkg / "tasks").glob("*.py")),
             pkg / "engines" / "hf.py", pkg / "engines" / "base.py"]
    for f in files:
        if f.is_file():
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """tiny_cache(**build_tiny_kwargs) -> a directory holding that tiny model, built once per test session.

    Building and warming up a tiny model costs seconds to tens of seconds, and many modules need one. Builds are
    kept under the session's temporary root (shared by all xdist workers), keyed by the build settings and a digest
    of the code that builds them; a file lock makes a second worker wait for the first one's build instead of
    repeating it. Callers must treat the directory as read-only."""
    from gspo_async.bootstrap.tiny import build_tiny

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-model-cache"
    root.mkdir(parents=True, exist_ok=True)
    digest = _source_digest()

    def get(**kwargs: Any) -> Path:
        kwargs.setdefault("num_threads", None)  # leave this process's torch threads as they are
        key = hashlib.sha256(json.dumps({k: v for k, v in kwargs.items() if k != "num_threads"}, sort_keys=True,
                                        default=str).encode() + digest.encode()).hexdigest()[:16]
        out = root / key
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "tiny_meta.json").is_file():
                tmp = root / f"{key}.building"
                shutil.rmtree(tmp, ignore_errors=True)
                build_tiny(tmp, **kwargs)
                tmp.rename(out)  # complete or absent: a build killed halfway is never reused
        return out

    return get


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_cache) -> Path:
    """The tiny model and tokenizer with the quickstart's warm-up, built once: it must sometimes succeed, or every
    group is constant, every advantage 0, and nothing trains."""
    return tiny_cache(seed=0)
