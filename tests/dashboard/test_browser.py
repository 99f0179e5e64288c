"""A real headless Chromium opens the dashboard of a real run with forced drops: every panel renders with data, no
script error, the drops panel shows the ledger's counts, the actors of the finished run show as "run ended".

Chromium is driven from the command line (no extra Python packages): ``--dump-dom`` gives the DOM after the
page's scripts ran, ``--screenshot`` saves test-artifacts/dashboard.png. Real mouse input (a legend click hides a
series, a drag zooms, a double-click resets) goes through the DevTools protocol on a pipe (tests/dashboard/cdp.py).
Install it with ``apt-get install -y chromium`` (Debian); the test is skipped, saying so, when no Chromium is found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import urllib.request
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gspo_async.dashboard.server import DashboardServer
from gspo_async.telemetry import read_metrics
from tests.dashboard.cdp import Browser
from tests.dashboard.forced_drops import ACTOR_IDS

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
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)  # before the module's real run, which is costly
def _needs_chromium() -> None:
    """Skip without Chromium, saying how to install it; CI sets GSPO_REQUIRE_BROWSER=1 to make that a failure."""
    if CHROMIUM is None:
        why = "no Chromium found on PATH: apt-get install -y chromium"
        if os.environ.get("GSPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why} (GSPO_REQUIRE_BROWSER=1: the browser test must run)")
        pytest.skip(why)


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
        self.attrs: dict[str, dict[str, str]] = {}
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "data-panel" in a:
            self.panels[a["data-panel"]] = a.get("data-has-data", "")
            self.attrs[a["data-panel"]] = a
        if tag == "body":
            self.body = a


@pytest.fixture(scope="module")
def run_dir(forced_run) -> Path:
    """The real short run with forced drops (tests/dashboard/forced_drops.py): a learner and three actor processes."""
    return forced_run.run_dir


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
    # A finished run: drawn once per batch of new data, not once per poll.
    assert parser.body["data-run-state"] == "ended"
    assert 1 <= int(parser.body["data-renders"]) <= 3, parser.body


def test_drops_panel_shows_the_ledgers_counts(page, run_dir, forced_run):
    from gspo_async.learner.ledger import replay

    server, profile = page
    result = chromium(server.url, profile / "drops", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    parser = PanelParser()
    parser.feed(result.stdout)
    shown = json.loads(parser.attrs["drops"]["data-drops"])
    ledger = replay(run_dir)
    assert ledger.drop_reasons["stale"] >= 10
    assert shown["staleness/dropped"] == ledger.drop_reasons["stale"]
    assert shown["drops/lease_attempts"] == ledger.drop_reasons["lease_attempts"]
    assert shown["drops/duplicate"] == forced_run.acks["duplicate"]
    assert shown["drops/late"] == forced_run.acks["dropped"]
    text = " ".join(result.stdout.split())
    assert f"too stale {ledger.drop_reasons['stale']} groups" in text
    # Every actor of the finished run is shown as such, none as alive.
    assert text.count(">run ended<") == len(ACTOR_IDS) and ">alive<" not in text


def test_view_parameters_smoothing_log_axis_and_zoom(page):
    server, profile = page
    result = chromium(server.url + "?smooth=0.6&log=1&zoom=5,20", profile / "view", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    parser = PanelParser()
    parser.feed(result.stdout)
    # Series at or below 0 (a reward of 0 on random text, a loss of 0) cannot be drawn on a log axis: the panel
    # says so instead of looking empty.
    empty = [p for p, has in parser.panels.items() if has != "true"]
    assert result.stdout.count("no value &gt; 0 to draw on a log y axis") + \
        result.stdout.count("no value > 0 to draw on a log y axis") == len(empty), empty
    assert len(empty) < len(parser.panels) // 2
    assert "tokens / s (log)" in result.stdout  # the log y axis is labelled (throughput is > 0)
    assert re.search(r'id="reset-zoom"(?![^>]*hidden)', result.stdout)  # zoomed: the reset button shows
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []


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


# The state of one panel's line chart, read from the page: the overlay that takes the mouse, the x tick labels
# (centre pixel, value), the legend entries and the colours of the drawn lines (normalised by the browser).
PANEL_STATE = """(() => {
  const sec = document.querySelector('[data-panel="%s"]');
  sec.scrollIntoView({block: 'center'});
  const svg = sec.querySelector('.chart svg');
  const norm = c => { const d = document.createElement('div'); d.style.color = c; document.body.appendChild(d);
    const v = getComputedStyle(d).color; d.remove(); return v; };
  const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
  const overlay = [...svg.querySelectorAll('rect[fill="transparent"]')].pop();
  return {
    overlay: box(overlay),
    xticks: [...svg.querySelectorAll('text[text-anchor="middle"]:not(.axis-title)')]
      .map(t => [t.getBoundingClientRect().left + t.getBoundingClientRect().width / 2, parseFloat(t.textContent)])
      .filter(t => isFinite(t[1])),
    legend: [...sec.querySelectorAll('.legend .item')].map(i => ({label: i.textContent,
      off: i.classList.contains('off'), box: box(i), color: norm(i.querySelector('.swatch').style.background)})),
    lines: [...svg.querySelectorAll('path[fill="none"]')].map(p => norm(p.getAttribute('stroke'))),
    renders: Number(document.body.dataset.renders),
    resetHidden: document.getElementById('reset-zoom').hidden,
  };
})()"""


def _panel(browser: Browser, panel: str) -> dict:
    return browser.evaluate(PANEL_STATE % panel)


def _x_at(state: dict, px: float) -> float:
    """The x value at viewport pixel `px` of a line chart, from its first and last x tick labels."""
    (p0, v0), (p1, v1) = state["xticks"][0], state["xticks"][-1]
    return v0 + (px - p0) * (v1 - v0) / (p1 - p0)


def check_legend_toggle_and_zoom(url: str, profile: Path, log: Path) -> None:
    """Real mouse input on the dashboard at `url`: a legend click hides a series (and only it) and a second click
    shows it again; a drag across a chart zooms every time chart to the dragged x range and shows the reset
    button; a double-click restores the full range."""
    with Browser(CHROMIUM, profile, WINDOW, log) as browser:
        browser.open(url)
        browser.wait_until("!!document.body && document.body.dataset.runState === 'ended' "
                           "&& document.body.dataset.renders > 0", what="the page's first drawing of the finished run")
        # --- event markers: one line per event of the run's summary inside a time chart's x range ---
        events = json.loads(urllib.request.urlopen(url.rstrip("/") + "/api/summary", timeout=30).read())["events"]
        markers = Counter(browser.evaluate("[...document.querySelectorAll('[data-panel=\"reward\"] .event-marker')]"
                                           ".map(e => e.dataset.kind)"))
        reward = _panel(browser, "reward")
        lo, hi = _x_at(reward, reward["overlay"][0]), _x_at(reward, reward["overlay"][0] + reward["overlay"][2])
        pad = 0.01 * (hi - lo)  # the tick-label fit is exact to a pixel or so
        steps = [(e["kind"], e["step"]) for e in events if e["step"] is not None]
        inside = Counter(kind for kind, step in steps if lo + pad < step < hi - pad)
        near = Counter(kind for kind, step in steps if lo - pad <= step <= hi + pad)
        assert inside and not inside - markers and not markers - near, (markers, steps, lo, hi)
        # --- click-to-hide: the loss panel draws total, policy-gradient and KL lines ---
        before = _panel(browser, "loss")
        assert len(before["legend"]) >= 2 and not any(i["off"] for i in before["legend"]), before["legend"]
        target = before["legend"][0]
        assert target["color"] in before["lines"], (target, before["lines"])
        x, y, w, h = target["box"]
        browser.click(x + w / 2, y + h / 2)
        browser.wait_until(f"Number(document.body.dataset.renders) > {before['renders']}", what="a redraw")
        hidden = _panel(browser, "loss")
        assert [i["label"] for i in hidden["legend"] if i["off"]] == [target["label"]]
        assert target["color"] not in hidden["lines"]
        assert len(hidden["lines"]) == len(before["lines"]) - before["lines"].count(target["color"])
        others = [_panel(browser, p) for p in ("reward", "throughput")]  # other panels keep their series
        assert all(not any(i["off"] for i in o["legend"]) for o in others)
        hidden = _panel(browser, "loss")  # scrolled back: the legend's place on the screen again
        x, y, w, h = hidden["legend"][0]["box"]
        browser.click(x + w / 2, y + h / 2)
        browser.wait_until(f"Number(document.body.dataset.renders) > {hidden['renders']}", what="a redraw")
        shown = _panel(browser, "loss")
        assert not any(i["off"] for i in shown["legend"]) and sorted(shown["lines"]) == sorted(before["lines"])

        # --- drag-to-zoom on the reward chart: every time chart shows the dragged range ---
        other_full = _panel(browser, "loss")
        full = _panel(browser, "reward")  # read last: the page is scrolled to it for the drag
        assert full["resetHidden"] and len(full["xticks"]) >= 2, full
        ox, oy, ow, oh = full["overlay"]
        a_px, b_px = ox + 0.3 * ow, ox + 0.7 * ow
        want = (_x_at(full, a_px), _x_at(full, b_px))
        span = _x_at(full, ox + ow) - _x_at(full, ox)
        browser.drag(a_px, b_px, oy + oh / 2)
        browser.wait_until(f"Number(document.body.dataset.renders) > {full['renders']}", what="a redraw")
        zoomed = _panel(browser, "reward")
        assert not zoomed["resetHidden"]
        got = (_x_at(zoomed, zoomed["overlay"][0]), _x_at(zoomed, zoomed["overlay"][0] + zoomed["overlay"][2]))
        assert abs(got[0] - want[0]) < 0.02 * span and abs(got[1] - want[1]) < 0.02 * span, (got, want, span)
        other = _panel(browser, "loss")  # the zoom is shared by the time charts
        got_other = (_x_at(other, other["overlay"][0]), _x_at(other, other["overlay"][0] + other["overlay"][2]))
        assert abs(got_other[0] - want[0]) < 0.02 * span and abs(got_other[1] - want[1]) < 0.02 * span
        assert other["xticks"] != other_full["xticks"]
        # --- double-click: back to the full range, the reset button hides ---
        zoomed = _panel(browser, "reward")
        ox, oy, ow, oh = zoomed["overlay"]
        browser.click(ox + ow / 2, oy + oh / 2, count=2)
        browser.wait_until(f"Number(document.body.dataset.renders) > {zoomed['renders']}", what="a redraw")
        reset = _panel(browser, "reward")
        assert reset["resetHidden"] and reset["xticks"] == full["xticks"]
        assert browser.console == [], browser.console


def test_legend_click_hides_a_series_and_drag_zooms(page, tmp_path):
    server, profile = page
    check_legend_toggle_and_zoom(server.url, profile / "input", tmp_path / "chromium.log")
