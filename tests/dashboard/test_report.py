"""The static report: files written, plots not blank, summary numbers checked by hand on a tiny run."""

import subprocess
import sys

import pytest

from gspo_async.dashboard.plots import FIGURES
from gspo_async.dashboard.report import summary, write_report
from gspo_async.telemetry import MetricRegistry


def test_report_of_a_run(run_dir, tmp_path):
    import matplotlib.image as mpimg

    path = write_report(run_dir, tmp_path / "out")
    assert path == tmp_path / "out" / "index.html"
    page = path.read_text()
    for name, title, _ in FIGURES:
        png = tmp_path / "out" / f"{name}.png"
        assert f'src="{name}.png"' in page and title in page
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 300 and pixels.std() > 0.05, f"{name}.png looks blank"
    assert "a0" in page and "late-3" in page  # the actors table
    assert "no data" not in page


def test_default_output_dir_is_inside_the_run(tmp_path):
    reg = MetricRegistry("learner", tmp_path)
    reg.set("reward/mean", 0.5)
    reg.log(1, time=0.0)
    reg.close()
    assert write_report(tmp_path) == tmp_path / "report" / "index.html"


def test_summary_by_hand(tmp_path):
    reg = MetricRegistry("learner", tmp_path)
    reg.update({"train/step": 1, "reward/mean": 0.2, "eval/accuracy": 0.5, "staleness/hist": [1, 1],
                "staleness/hist_tokens": [10, 30]})
    reg.log(1, time=100.0)
    reg.update({"train/step": 2, "reward/mean": 0.4, "eval/accuracy": 0.25, "staleness/hist": [3, 1]})
    reg.inc("staleness/dropped", 2)
    reg.log(2, time=160.0)
    reg.close()
    from gspo_async.telemetry import read_metrics

    rows = dict(summary(read_metrics(tmp_path)))
    assert rows["steps"] == "2"
    assert rows["wall time"] == "1.0 min"
    assert rows["reward (mean of last 5 records)"] == "0.3"  # (0.2 + 0.4) / 2
    assert rows["final eval accuracy"] == "25.0 %" and rows["best eval accuracy"] == "50.0 %"
    # groups: lags [3, 1] -> mean (0*3 + 1*1) / 4 = 0.25; tokens: [10, 30] -> 30 / 40 = 0.75.
    assert rows["staleness, groups-weighted"] == "mean 0.250 versions (0: 75.0%, 1: 25.0%)"
    assert rows["staleness, tokens-weighted"] == "mean 0.750 versions (0: 25.0%, 1: 75.0%)"
    assert rows["drops"] == "too stale 2 groups"


def test_empty_and_missing_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="nothing to report"):
        write_report(tmp_path)


@pytest.mark.slow
def test_cli_report(run_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "gspo_async", "report", str(run_dir), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "index.html")
    assert len(list(tmp_path.glob("*.png"))) == len(FIGURES)


def test_missing_matplotlib_names_the_install_command(run_dir, tmp_path, monkeypatch):
    from gspo_async.dashboard.report import MissingExtraError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the [report] extra sees
    with pytest.raises(MissingExtraError, match=r"pip install 'gspo-async\[report\]'"):
        write_report(run_dir, tmp_path)


@pytest.mark.slow
def test_cli_report_without_matplotlib_says_how_to_install(run_dir, tmp_path):
    # A sitecustomize-free way to hide matplotlib from the child: a module of that name that raises on import.
    shadow = tmp_path / "shadow"
    (shadow / "matplotlib").mkdir(parents=True)
    (shadow / "matplotlib" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\")\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "gspo_async", "report", str(run_dir), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "pip install 'gspo-async[report]'" in out.stderr


def test_report_counts_are_the_dashboard_summary(run_dir):
    from gspo_async.dashboard.summary import COUNTS, run_summary
    from gspo_async.telemetry import read_metrics

    records = read_metrics(run_dir)
    rows = dict(summary(records))
    digest = run_summary(records, records[-1]["time"])
    for key, label in COUNTS:
        assert rows[label] == f"{digest['counts'][key]:,.0f}"
    assert rows["run"] == "ended (final record written)"
    assert "evaluation ×6" in rows["events"] and "checkpoint ×2" in rows["events"]
