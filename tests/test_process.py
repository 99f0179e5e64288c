"""Console logging of every role and how a role's process ends (gspo_async/process.py)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gspo_async.process import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def test_console_logging_follows_the_current_streams(monkeypatch):
    setup_logging("role")
    log = logging.getLogger("gspo_async.test")
    first_out, first_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first_out)
    monkeypatch.setattr(sys, "stderr", first_err)
    log.info("hello")
    log.warning("careful")
    assert first_out.getvalue() == "[role] hello\n" and first_err.getvalue() == "[role] careful\n"
    # A stream replaced and closed after setup (a finished capture) must not break the next record.
    first_err.close()
    second_err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second_err)
    log.warning("still heard")
    assert second_err.getvalue() == "[role] still heard\n"
    setup_logging("role")  # called again: still one line per record
    log.warning("once")
    assert second_err.getvalue().count("once") == 1


# A role's last lines: a log record (through a buffered file handler) and an unterminated print, then leave().
_LEAVE = """
import atexit, logging, sys
{setup}
from gspo_async.process import leave
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
logging.getLogger("role").info("last record")
atexit.register(lambda: print("teardown ran", file=sys.stderr))
print("no newline", end="")
leave(5)
"""

# A single-rank gloo group still referenced at exit, with work done on it (what DeepSpeed leaves behind).
_GLOO = """
import datetime, torch, torch.distributed as dist
store = dist.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=30))
group = dist.ProcessGroupGloo(store, 0, 1, datetime.timedelta(seconds=30))
group.broadcast([torch.ones(4)]).wait()
"""


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["", _GLOO], ids=["plain", "gloo-group-held"])
def test_leave_flushes_everything_and_exits_with_the_roles_code(tmp_path, setup):
    log_file = tmp_path / "role.log"
    done = subprocess.run([sys.executable, "-c", _LEAVE.format(setup=setup), str(log_file)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    assert done.stdout == "no newline"
    assert "last record" in log_file.read_text()
    # Without torch.distributed the interpreter ends normally; with it, teardown is skipped (see leave()).
    assert ("teardown ran" in done.stderr) == (setup == "")


@pytest.mark.slow
@pytest.mark.parametrize("fault, code, said", [
    ("c.main = lambda: 1 / 0", 1, "ZeroDivisionError"),  # a crash: traceback, exit 1, through leave()
    ("import sys; sys.argv = ['gspo-async', 'nonsense']", 2, "gspo-async: error: argument command: invalid choice"),
    ("import sys; sys.argv = ['gspo-async', '--help']", 0, "usage: gspo-async"),
], ids=["crash", "usage-error", "help"])
def test_the_entry_point_ends_every_way_with_the_right_code(fault, code, said):
    # torch.distributed loaded first: every one of these ends by os._exit, after what it printed was flushed
    script = f"import torch.distributed\nimport gspo_async.cli as c\n{fault}\nc.entry()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == code, done.stderr
    assert said in done.stdout + done.stderr


def test_the_command_line_entry_points_end_through_leave():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gspo-async": "gspo_async.cli:entry"}
    assert (ROOT / "gspo_async/__main__.py").read_text().split() == ["from", "gspo_async.cli", "import", "entry",
                                                                    "entry()"]
