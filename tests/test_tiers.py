"""The two test tiers of tests/conftest.py: the spawn guard that keeps process starts out of the unit tier, and the
xdist groups that keep process-starting tests from oversubscribing the cores."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def suite_conftest(request) -> ModuleType:
    """tests/conftest.py as pytest loaded it (the instance whose guard is installed), not a second import."""
    for plugin in request.config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and Path(getattr(plugin, "__file__", "") or "") == ROOT / "tests/conftest.py":
            return plugin
    raise AssertionError("tests/conftest.py is not loaded as a plugin")


@pytest.mark.parametrize("start", [
    lambda: subprocess.run(["true"]),
    lambda: multiprocessing.get_context("spawn").Process(target=print, name="worker-x").start(),
    lambda: os.system("true"),
], ids=["subprocess", "multiprocessing", "os.system"])
def test_a_unit_test_that_starts_a_process_is_refused_and_recorded(suite_conftest, request, start):
    # This test is in the unit tier: the guard must refuse the start and record it against this test (the record
    # fails the test's report even when the code under test swallowed the error; it is taken back here).
    with pytest.raises(RuntimeError, match=r"not marked slow but started a process .*mark it @pytest.mark.slow"):
        start()
    seen = suite_conftest.GUARD.seen.pop(request.node.nodeid)
    assert len(seen) == 1 and seen[0].split()[0] in {"subprocess", "multiprocessing", "os.system"}, seen


def test_a_slow_test_may_start_processes(suite_conftest, request):
    guard = suite_conftest.GUARD
    assert guard.item is request.node  # the guard is watching this (unit) test
    slow = pytest.Function.from_parent(request.node.parent, name=request.node.name)
    slow.add_marker(pytest.mark.slow)
    guard.item = slow
    try:
        guard.check("subprocess anything")  # no error, nothing recorded
    finally:
        guard.item = request.node
    assert request.node.nodeid not in guard.seen and slow.nodeid not in guard.seen


class FakeItem:
    """What pytest_collection_modifyitems reads of an item: markers and a path."""

    def __init__(self, path: str, *marks: pytest.MarkDecorator) -> None:
        self.fspath = ROOT / path
        self.marks = [m.mark for m in marks]

    def get_closest_marker(self, name: str):
        return next((m for m in self.marks if m.name == name), None)

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.mark)

    def group(self) -> str | None:
        m = self.get_closest_marker("xdist_group")
        return m.args[0] if m else None


def test_process_starting_tests_are_put_in_two_xdist_groups(suite_conftest):
    items = [FakeItem("tests/integration/test_training.py", pytest.mark.slow),
             FakeItem("tests/reliability/test_load.py", pytest.mark.slow),
             FakeItem("tests/readme/test_quickstart.py", pytest.mark.slow),
             FakeItem("tests/launch/test_scripts.py", pytest.mark.slow),
             FakeItem("tests/weights/test_elastic.py", pytest.mark.slow),
             FakeItem("tests/learner/test_deepspeed.py", pytest.mark.slow),
             FakeItem("tests/algo/test_losses.py"),
             FakeItem("tests/learner/test_deepspeed.py", pytest.mark.slow, pytest.mark.xdist_group("own"))]
    suite_conftest.pytest_collection_modifyitems(None, items)
    assert [i.group() for i in items] == ["clusters", "clusters", "processes", "processes", "processes", "clusters",
                                          None, "own"]


def test_console_handlers_set_up_by_a_test_are_removed_after_it(suite_conftest):
    import logging

    from gspo_async.process import setup_logging

    logger = logging.getLogger("gspo_async")
    console = lambda: [h for h in logger.handlers if getattr(h, "_gspo_console", False)]  # noqa: E731
    before = logger.level
    fixture = suite_conftest._console_logging_ends_with_the_test.__wrapped__()  # the autouse fixture's body
    next(fixture)
    setup_logging("learner", "DEBUG")  # what a role's main does, in-process
    assert len(console()) == 2 and logger.level == logging.DEBUG
    with pytest.raises(StopIteration):
        next(fixture)  # the teardown
    assert console() == [] and logger.level == before


class FakeSession:
    """What pytest_sessionfinish reads: the config (xdist controller or worker), the reporter's stats."""

    def __init__(self, skipped: int, worker: bool = False) -> None:
        self.lines: list[str] = []
        reporter = type("Reporter", (), {"stats": {"skipped": [object()] * skipped} if skipped else {},
                                         "write_line": lambda _, line, **kw: self.lines.append(line)})()
        manager = type("Manager", (), {"get_plugin": lambda _, name: reporter if name == "terminalreporter"
                                       else None})()
        self.config = type("Config", (), {"pluginmanager": manager, **({"workerinput": {}} if worker else {})})()
        self.exitstatus = pytest.ExitCode.OK


def test_require_no_skips_fails_a_run_with_a_skipped_test(suite_conftest, monkeypatch):
    monkeypatch.setenv("GSPO_REQUIRE_NO_SKIPS", "1")
    run = FakeSession(skipped=2)
    suite_conftest.pytest_sessionfinish(run, 0)
    assert run.exitstatus == pytest.ExitCode.TESTS_FAILED and "2 test(s) skipped" in run.lines[0]
    for quiet in (FakeSession(skipped=0), FakeSession(skipped=2, worker=True)):  # nothing skipped; an xdist worker
        suite_conftest.pytest_sessionfinish(quiet, 0)
        assert quiet.exitstatus == pytest.ExitCode.OK and quiet.lines == []
    monkeypatch.delenv("GSPO_REQUIRE_NO_SKIPS")
    local = FakeSession(skipped=2)  # outside CI a skip is reported by pytest, not turned into a failure
    suite_conftest.pytest_sessionfinish(local, 0)
    assert local.exitstatus == pytest.ExitCode.OK


# ----- the README's test-time table is what tools/test_timing.py measured ------------------------------------------
def timing_tool() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_timing_tool", ROOT / "tools" / "test_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_rendering_of_the_recorded_times():
    assert timing_tool().main(["--check"]) == 0, "run python tools/test_timing.py --render"


def test_summary_parsing_and_rendering_by_hand():
    tool = timing_tool()
    out = ("....\n============ slowest 15 durations ============\n3.20s call tests/a.py::test_x\n"
           "== 729 passed, 2 skipped, 13 deselected, 1 error in 116.23s (0:01:56) ==\n")
    got = tool.parse_summary(out)
    assert (got["passed"], got["skipped"], got["errors"], got["failed"], got["pytest_s"]) == (729, 2, 1, 0, 116.23)
    assert "deselected" not in got  # xdist's summary line leaves it out: not recorded
    with pytest.raises(ValueError, match="no pytest summary line"):
        tool.parse_summary("ERROR: could not install\n")
    rec = {"command": 'bash tools/test.sh -m "not slow"', "wall_s": 130.4, "pytest_s": 116.23, "passed": 729,
           "failed": 0, "errors": 1, "skipped": 2, "cpus": 2, "load_1min_before": 0.5,
           "commit": "abc1234", "finished": "2026-01-01 00:00 UTC"}
    text = tool.render({"full@before": {**rec, "wall_s": 615.0, "command": "bash tools/test.sh"}, "unit": rec})
    lines = text.splitlines()
    assert lines[2] == ('| unit | `bash tools/test.sh -m "not slow"` | 2 min 10 s | 1 min 56 s | 729 | 1 | 2 | '
                        '2 cores, load 0.5 before | abc1234, 2026-01-01 00:00 UTC |')
    assert lines[3].startswith("| full@before | `bash tools/test.sh` | 10 min 15 s |")
    assert lines[-1] == "Not measured yet: `python tools/test_timing.py full`."
    both = tool.render({"full@before": {**rec, "wall_s": 615.0}, "full": {**rec, "wall_s": 369.0}})
    assert "wall time 0.60x (6 min 09 s vs 10 min 15 s; goal at most 0.60x: met)." in both  # 369 / 615 by hand
    slower = tool.render({"full@before": {**rec, "wall_s": 600.0}, "full": {**rec, "wall_s": 450.0, "cpu": "other"}})
    assert "wall time 0.75x (7 min 30 s vs 10 min 00 s; goal at most 0.60x: NOT met); measured on different " \
           "machines" in slower
    assert tool.render({}) == ("Not measured yet: `python tools/test_timing.py unit`, "
                               "`python tools/test_timing.py full`.\n")
    doc = f"a\n{tool.BEGIN}\nold\n{tool.END}\nb\n"
    assert tool.rewrite(doc, "new\n") == f"a\n{tool.BEGIN}\nnew\n{tool.END}\nb\n"
    with pytest.raises(ValueError, match="needs exactly one pair of markers"):
        tool.rewrite("no markers", "x\n")
