"""Warm role starts (tests/support/warm.py) against cold ones: the same command gives the same output, exit code,
signal handling and import path, so the integration tests that start their roles warm test what a user runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT
from tests.support.warm import WarmProcess

pytestmark = pytest.mark.slow

QUICKSTART = str(ROOT / "configs/quickstart.yaml")


def cold(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gspo_async", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def warm(argv: list[str], env: dict[str, str], log, timeout: float = 120) -> int:
    proc = WarmProcess(argv, ROOT, env, log)
    return proc.wait(timeout=timeout)


@pytest.mark.parametrize("argv", [["config", "check", QUICKSTART], ["config", "check", "missing.yaml"]],
                         ids=["valid", "missing-file"])
def test_a_command_prints_and_exits_as_it_does_cold(argv, tmp_path):
    env = dict(os.environ)
    want = cold(argv, env)
    log = tmp_path / "warm.log"
    assert warm(argv, env, log) == want.returncode
    assert sorted(log.read_text().splitlines()) == sorted((want.stdout + want.stderr).splitlines())
    assert want.returncode == (0 if argv[-1] == QUICKSTART else 2)  # both outcomes are compared, not one twice


def test_the_import_path_is_the_cold_one_with_pythonpath(tmp_path, tiny_model_dir):
    # A user's reward module on PYTHONPATH is found, as a cold start finds it (preflight calls the reward), and the
    # role's import path is the cold one, entry for entry: nothing the test session put on the fork server's path
    # (the test directories pytest inserts) leaks into it.
    (tmp_path / "only_on_pythonpath.py").write_text(
        "import sys\n\n"
        "def reward(prompt, response, answer):\n"
        "    print('import path:', sys.path)\n"
        "    return float(response.strip() == answer.strip())\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    argv = ["preflight", QUICKSTART, f"model.path={tiny_model_dir}", "model.build_tiny_if_missing=false",
            "task.reward=only_on_pythonpath:reward", "task.reward_workers=0"]
    want = cold(argv, env)
    log = tmp_path / "warm.log"
    assert warm(argv, env, log) == want.returncode == 0, log.read_text() + want.stdout + want.stderr
    paths = {line for line in log.read_text().splitlines() if line.startswith("import path:")}
    assert paths == {line for line in want.stdout.splitlines() if line.startswith("import path:")}
    assert len(paths) == 1 and paths.pop().startswith(f"import path: {[str(ROOT), str(tmp_path)]}"[:-1] + ",")


def test_signals_reach_the_role_and_exit_codes_say_so(tmp_path):
    # An actor whose "learner" is a bare TCP listener waits for a welcome that never comes; once it has connected,
    # its stop handler is installed (run_actor installs it before connecting). SIGTERM then stops it cleanly (exit
    # 0, its own words), SIGKILL ends it with -9, as subprocess.Popen reports a cold process.
    env = dict(os.environ)
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(60)
            log = tmp_path / f"{sig.name}.log"
            proc = WarmProcess(["actor", "--learner", "127.0.0.1:%d" % listener.getsockname()[1], "--id", "w0"],
                               ROOT, env, log)
            assert proc.poll() is None
            conn, _ = listener.accept()
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == code, log.read_text()
            conn.close()
        if sig == signal.SIGTERM:
            assert "stopped (SIGTERM) before a learner answered" in log.read_text()
