"""The page's pure chart helpers by hand, run in Node (skipped, saying so, without Node): min/max downsampling."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gspo_async.dashboard.server import STATIC_DIR

NODE = shutil.which("node")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NODE is None, reason="no node on PATH (apt-get install -y nodejs)")]


def run_js(expr: str):
    script = f"global.window = {{}};\n{(STATIC_DIR / 'charts.js').read_text()}\n" \
             f"process.stdout.write(JSON.stringify({expr}));"
    out = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_downsample_keeps_short_series_and_bands_long_ones():
    short = [[i, i * i] for i in range(10)]
    assert run_js(f"window.Charts.downsample({json.dumps(short)}, 5)") == {"points": short, "band": None}
    # 12 points into 3 buckets of x width 11/3: x 0..3 | 4..7 | 8..11; y alternates 0, 10.
    pts = [[i, 10 * (i % 2)] for i in range(12)]
    got = run_js(f"window.Charts.downsample({json.dumps(pts)}, 3)")
    assert got["points"] == [[1.5, 5], [5.5, 5], [9.5, 5]]  # mean x and mean y per bucket
    assert got["band"] == [[1.5, 0, 10], [5.5, 0, 10], [9.5, 0, 10]]  # the noise survives as the band
