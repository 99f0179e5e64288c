"""MetricRegistry: recording semantics, the JSONL log and its tolerant readers."""

import json
import math
import threading

import numpy as np
import pytest

from gspo_async.telemetry import MetricRegistry, actor_filename, read_metrics, read_metrics_from


def test_set_inc_observe_update(tmp_path):
    reg = MetricRegistry("learner", None)
    reg.set("train/loss", 0.5)
    reg.inc("train/tokens", 100)
    reg.inc("train/tokens", 28)
    reg.observe("staleness/hist", 2)
    reg.observe("staleness/hist", 0)
    reg.observe("staleness/hist_tokens", 2, 64)
    reg.update({"reward/mean": np.float32(0.25), "train/version": np.int64(3), "staleness/hist_tokens": [10, 0, 64]})
    assert reg.snapshot() == {"train/loss": 0.5, "train/tokens": 128.0, "staleness/hist": [1.0, 0.0, 1.0],
                              "staleness/hist_tokens": [10.0, 0.0, 64.0], "reward/mean": 0.25, "train/version": 3.0}


def test_snapshot_is_a_copy():
    reg = MetricRegistry("learner", None)
    reg.set("staleness/hist", [1, 2])
    snap = reg.snapshot()
    snap["staleness/hist"].append(9)
    assert reg.snapshot()["staleness/hist"] == [1.0, 2.0]


def test_bad_calls_name_the_problem():
    reg = MetricRegistry("learner", None)
    with pytest.raises(ValueError, match="unknown metric name"):
        reg.set("train/nonsense", 1)
    with pytest.raises(TypeError, match="histogram-list: pass a list"):
        reg.set("staleness/hist", 3)
    with pytest.raises(TypeError, match="pass one number, not a list"):
        reg.set("train/loss", [1, 2])
    with pytest.raises(TypeError, match="takes a number"):
        reg.set("train/loss", "high")
    with pytest.raises(TypeError, match="use observe"):
        reg.inc("staleness/hist")
    with pytest.raises(ValueError, match="only grows"):
        reg.inc("train/tokens", -1)
    with pytest.raises(TypeError, match="not a histogram-list"):
        reg.observe("train/loss", 0)
    with pytest.raises(ValueError, match="bin index"):
        reg.observe("staleness/hist", -1)
    with pytest.raises(ValueError, match="role must be"):
        MetricRegistry("", None)


def test_update_is_all_or_nothing():
    reg = MetricRegistry("learner", None)
    with pytest.raises(ValueError):
        reg.update({"train/loss": 1.0, "train/typo": 2.0})
    assert reg.snapshot() == {}


def test_actor_heartbeats_and_departure():
    reg = MetricRegistry("learner", None)
    reg.set_actor("a1", {"tokens_per_s": 812, "version": 7})
    reg.set_actor("a2", {"tokens_per_s": 400})
    assert reg.snapshot() == {"actor/a1/tokens_per_s": 812.0, "actor/a1/version": 7.0, "actor/a2/tokens_per_s": 400.0}
    with pytest.raises(ValueError, match="suffix 'speed'"):
        reg.set_actor("a1", {"speed": 1})
    reg.forget_actor("a1")
    assert reg.snapshot() == {"actor/a2/tokens_per_s": 400.0}


def test_log_writes_one_json_line_per_call(tmp_path):
    reg = MetricRegistry("learner", tmp_path)
    reg.set("train/loss", 0.5)
    reg.set("staleness/hist", [3, 1])
    first = reg.log(1, time=1000.0)
    reg.set("train/loss", math.nan)  # a diverged loss is still recorded, as null
    reg.set_actor("a1", {"tokens_per_s": 10})
    reg.log(np.int64(2), time=1002.5)
    reg.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == first == {"time": 1000.0, "role": "learner", "step": 1, "staleness/hist": [3.0, 1.0],
                                             "train/loss": 0.5}
    assert json.loads(lines[1]) == {"time": 1002.5, "role": "learner", "step": 2, "staleness/hist": [3.0, 1.0],
                                    "train/loss": None, "actor/a1/tokens_per_s": 10.0}
    assert "NaN" not in lines[1]  # strict JSON: browsers reject NaN
    assert read_metrics(tmp_path) == [json.loads(x) for x in lines]
    assert read_metrics(tmp_path / "metrics.jsonl") == read_metrics(tmp_path)


def test_log_uses_wall_time_by_default(tmp_path):
    import time

    reg = MetricRegistry("learner", tmp_path)
    before = time.time()
    rec = reg.log(0)
    assert before <= rec["time"] <= time.time()
    with pytest.raises(TypeError, match="step must be an int"):
        reg.log("first")
    with pytest.raises(TypeError, match="step must be an int"):
        reg.log(2.5)
    reg.close()


def test_actor_file_path_and_role(tmp_path):
    assert actor_filename("a1") == "actors/a1/metrics.jsonl"
    with pytest.raises(ValueError, match="actor id '../x'"):
        actor_filename("../x")
    reg = MetricRegistry("actor", tmp_path, filename=actor_filename("a1"))
    reg.set_actor("a1", {"tokens_per_s": 5.0})
    reg.log(0, time=1.0)
    reg.close()
    assert read_metrics(tmp_path / "actors" / "a1") == [{"time": 1.0, "role": "actor", "step": 0,
                                                          "actor/a1/tokens_per_s": 5.0}]


def test_partial_last_line_is_skipped_and_appending_recovers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reg = MetricRegistry("learner", tmp_path)
    reg.set("train/loss", 1.0)
    reg.log(1, time=1.0)
    reg.close()
    with open(path, "a") as f:
        f.write('{"time": 2.0, "role": "learner", "step": 2, "train/lo')  # a writer killed mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    # A restarted writer starts on a fresh line: the torn line stays torn, the new record is intact.
    reg = MetricRegistry("learner", tmp_path)
    reg.set("train/loss", 3.0)
    reg.log(3, time=3.0)
    reg.close()
    with pytest.warns(UserWarning, match="malformed line"):
        records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 3]


def test_last_line_without_newline_is_kept_when_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"time": 1.0, "role": "learner", "step": 1}\n{"time": 2.0, "role": "learner", "step": 2}')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file at .*metrics.jsonl"):
        read_metrics(tmp_path)


def test_incremental_reader_returns_only_whole_new_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reg = MetricRegistry("learner", tmp_path)
    for step in range(3):
        reg.set("train/loss", step)
        reg.log(step, time=float(step))
    records, offset = read_metrics_from(path, 0)
    assert [r["step"] for r in records] == [0, 1, 2] and offset == path.stat().st_size
    assert read_metrics_from(path, offset) == ([], offset)
    line = json.dumps({"time": 3.0, "role": "learner", "step": 3}) + "\n"
    with open(path, "a") as f:
        f.write(line[:10])
        f.flush()
        assert read_metrics_from(path, offset) == ([], offset)  # half a line is left for the next call
        f.write(line[10:])
    records, new_offset = read_metrics_from(path, offset)
    assert [r["step"] for r in records] == [3] and new_offset == offset + len(line)
    # max_bytes: progress in chunks, whole lines only, never stuck on a line longer than the chunk.
    got, off = [], 0
    while True:
        chunk, off2 = read_metrics_from(path, off, max_bytes=5)
        if off2 == off:
            break
        got += chunk
        off = off2
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    reg.close()


def test_concurrent_increments_are_not_lost():
    reg = MetricRegistry("learner", None)

    def work():
        for _ in range(2000):
            reg.inc("train/samples")
            reg.observe("staleness/hist", 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.snapshot() == {"train/samples": 8000.0, "staleness/hist": [0.0, 8000.0]}


def test_close_twice_and_context_manager(tmp_path):
    with MetricRegistry("learner", tmp_path) as reg:
        reg.log(0, time=0.0)
    reg.close()
    assert len(read_metrics(tmp_path)) == 1


class FailingSink:
    """A sink whose backend is down (e.g. a W&B outage)."""

    closed = False

    def log(self, step, values, time):
        raise ConnectionError("backend unreachable")

    def close(self):
        self.closed = True


def test_a_failing_sink_warns_and_the_log_goes_on(tmp_path):
    sink = FailingSink()
    reg = MetricRegistry("learner", tmp_path, sinks=[sink])
    reg.set("train/loss", 1.0)
    with pytest.warns(RuntimeWarning, match="FailingSink failed to log step 1: ConnectionError"):
        reg.log(1, time=1.0)
    reg.close()
    assert sink.closed and [r["step"] for r in read_metrics(tmp_path)] == [1]
