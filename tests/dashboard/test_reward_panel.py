"""The dashboard's reward panel in a real headless Chromium: each reward function's mean and the failed reward
calls by kind (only the kinds that occurred), from the metrics the learner records (`reward/<fn>/mean`,
`reward/errors/<kind>`). Skipped, saying so, without Chromium (``apt-get install -y chromium``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gspo_async.dashboard.server import DashboardServer
from gspo_async.telemetry import MetricRegistry

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def write_run(run_dir: Path, steps: int = 12, first_failing_step: int = 7) -> Path:
    """A finished run's metrics as the learner records them: two reward functions, 'exception' failures from
    `first_failing_step` on (two a step), no timeouts or bad values."""
    reg = MetricRegistry("learner", run_dir)
    t0 = time.time() - steps
    for step in range(1, steps + 1):
        failed = 2.0 * max(0, step - first_failing_step + 1)
        reg.update({"train/step": float(step), "train/version": float(step), "reward/mean": 0.1 * step,
                    "reward/std": 0.05, "reward/accuracy/mean": 0.05 * step, "reward/format/mean": 0.5,
                    "reward/errors/exception": failed, "reward/errors/timeout": 0.0,
                    "reward/errors/bad_value": 0.0, "reward/error_frac": failed / 64})
        if step == steps:
            reg.set("learner/finished", 1)
        reg.log(step, time=t0 + step)
    reg.close()
    return run_dir


def reward_panel_text(url: str, profile: Path) -> str:
    """The reward panel's text in the DOM after the page's scripts ran."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--window-size=1400,2300", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.index('data-panel="reward"')
    end = done.stdout.find("data-panel=", start + 20)
    return re.sub(r"<[^>]+>", " ", done.stdout[start:end if end > 0 else None])


def test_reward_panel_shows_each_function_and_the_failed_calls_by_kind(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("GSPO_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found on PATH (GSPO_REQUIRE_BROWSER=1: the browser test must run)")
        pytest.skip("no Chromium found on PATH: apt-get install -y chromium")
    with DashboardServer(write_run(tmp_path / "failing"), max_bytes=16_000) as server:
        text = reward_panel_text(server.url, tmp_path / "profile-a")
    assert "failed: exception (right)" in text and "failed calls (total)" in text
    assert "failed: timeout" not in text and "failed: bad_value" not in text  # kinds that never occurred
    assert "accuracy" in text and "format" in text  # each function's mean, reward/<fn>/mean
    with DashboardServer(write_run(tmp_path / "clean", first_failing_step=99), max_bytes=16_000) as server:
        clean = reward_panel_text(server.url, tmp_path / "profile-b")
    assert "accuracy" in clean and "failed:" not in clean
