"""A real headless Chromium opens the dashboard of a run: every panel renders with data, no script error.

Chromium is driven from the command line (no extra Python packages): ``--dump-dom`` gives the DOM after the
page's scripts ran, ``--screenshot`` saves test-artifacts/dashboard.png. Install it with
``apt-get install -y chromium`` (Debian); the test is skipped, saying so, when no Chromium is found.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gspo_async.dashboard.server import DashboardServer
from gspo_async.telemetry import read_metrics

PANELS = {"reward", "accuracy", "throughput", "staleness-hist", "staleness", "queue-age", "actors", "actor-throughput",
          "weight-sync", "learner", "queues", "drops", "drop-lengths", "loss", "clip", "ratio", "is-weight", "policy",
          "response-length"}
WINDOW = (1400, 2300)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found on PATH: apt-get install -y chromium")]


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
           # Virtual time: the page's timers and polls run as fast as they can, then the browser stops.
           "--virtual-time-budget=10000", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class PanelParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.panels: dict[str, str] = {}
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "data-panel" in a:
            self.panels[a["data-panel"]] = a.get("data-has-data", "")
        if tag == "body":
            self.body = a


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A real short run: `gspo-async local` with a learner and two actor processes on loopback."""
    out = tmp_path_factory.mktemp("real-run") / "run"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "gspo_async", "local", str(root / "configs/quickstart.yaml"),
                    f"run_dir={out}", f"model.path={tiny_model_dir}", "learner.total_steps=16",
                    "learner.eval_every=4", "rollout_batch_size=8", "telemetry.log_every_s=0.5",
                    "telemetry.dashboard_port=null", "learner.checkpoint.every=0"],
                   check=True, timeout=300, cwd=root, capture_output=True)
    return out


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory):
    # A small answer size makes the page fetch the file in many incremental polls, as it does for a long run.
    with DashboardServer(run_dir, max_bytes=16_000) as server:
        yield server, tmp_path_factory.mktemp("chromium")


def test_every_panel_renders_with_data(page, run_dir):
    server, profile = page
    result = chromium(server.url, profile / "dom", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    parser = PanelParser()
    parser.feed(result.stdout)
    assert set(parser.panels) == PANELS
    assert [p for p, has in parser.panels.items() if has != "true"] == []
    # Every record arrived through the incremental polls.
    assert int(parser.body["data-records"]) == len(read_metrics(run_dir))
    assert int(parser.body["data-offset"]) == (run_dir / "metrics.jsonl").stat().st_size
    # The page logs nothing unless a panel failed to draw.
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


def test_time_axis_and_token_weighting(page):
    server, profile = page
    result = chromium(server.url + "?x=time&weight=tokens", profile / "time", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    parser = PanelParser()
    parser.feed(result.stdout)
    assert [p for p, has in parser.panels.items() if has != "true"] == []
    assert "elapsed time (min)" in result.stdout and "share of tokens" in result.stdout
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []


def test_screenshot(page, artifact_dir):
    server, profile = page
    path = artifact_dir / "dashboard.png"
    path.unlink(missing_ok=True)
    result = chromium(server.url, profile / "shot", f"--screenshot={path}")
    assert result.returncode == 0, result.stderr[-2000:]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == WINDOW
    assert len(data) > 100_000  # a page of charts, not a blank window
