"""TensorBoard and W&B sinks, read back from what they wrote; clear errors when a package is missing."""

import sys
import time

import pytest

from gspo_async.config import TelemetryConfig
from gspo_async.telemetry import MetricRegistry
from gspo_async.telemetry.sinks import TensorBoardSink, WandbSink, _hist_stats, build_sinks


def test_hist_stats_by_hand():
    # lags 0,1,2 with counts 3,0,1: num 4, sum 0*3 + 2*1 = 2, sum of squares 4.
    assert _hist_stats([3, 0, 1]) == {"min": 0.0, "max": 2.0, "num": 4.0, "sum": 2.0, "sum_squares": 4.0,
                                      "bucket_limits": [0.5, 1.5, 2.5], "bucket_counts": [3.0, 0.0, 1.0]}
    assert _hist_stats([0, 0]) is None


def test_tensorboard_sink_writes_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reg = MetricRegistry("learner", tmp_path, sinks=[TensorBoardSink(tmp_path / "tb")])
    for step, loss in [(1, 0.5), (2, 0.25)]:
        reg.set("train/loss", loss)
        reg.observe("staleness/hist", step - 1)
        reg.log(step)
    reg.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    hist = acc.Histograms("staleness/hist")
    assert [h.step for h in hist] == [1, 2]
    assert hist[-1].histogram_value.num == 2 and list(hist[-1].histogram_value.bucket) == [1.0, 1.0]


@pytest.mark.slow  # wandb runs its own wandb-core process, even offline
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wandb_sink_offline(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb); the W&B sink is optional")
    sink = WandbSink("gspo-async-test", mode="offline", run_dir=tmp_path)
    reg = MetricRegistry("learner", tmp_path, sinks=[sink])
    for step in (1, 2, 3):
        reg.set("reward/mean", step / 10)
        reg.set("staleness/hist", [step, 1])
        reg.log(step)
    assert sink.run.summary["reward/mean"] == pytest.approx(0.3)
    reg.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # W&B's service process writes the run file shortly after finish() returns: poll with a deadline.
    deadline = time.monotonic() + 30
    while b"reward/mean" not in runs[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    data = runs[0].read_bytes()
    assert b"reward/mean" in data and b"staleness/hist" in data


def test_build_sinks_from_config(tmp_path):
    assert build_sinks(TelemetryConfig(), tmp_path) == []
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    sinks = build_sinks(TelemetryConfig(tensorboard=True), tmp_path)
    try:
        assert len(sinks) == 1 and isinstance(sinks[0], TensorBoardSink)
        assert sinks[0].log_dir == tmp_path / "tensorboard"
    finally:
        for s in sinks:
            s.close()
    with pytest.raises(ValueError, match="needs a run directory"):
        build_sinks(TelemetryConfig(tensorboard=True), None)


def test_missing_packages_give_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if not installed
    with pytest.raises(ImportError, match="pip install wandb .*telemetry.wandb: false"):
        WandbSink("p", run_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard .*telemetry.tensorboard: false"):
        TensorBoardSink(tmp_path)
    with pytest.raises(ValueError, match="online, offline or disabled"):
        WandbSink("p", mode="cloud")
