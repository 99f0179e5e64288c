"""One metric registry per process: current values, a JSONL log, a Prometheus endpoint and optional sinks.

Every name is checked against `names.py`. Values are floats (gauges, counters) or lists of floats
(histogram-list metrics, cumulative counts per bin). The registry is thread-safe: the learner's training loop,
its heartbeat handler and the Prometheus thread all touch it.

JSONL record (one line per `log` call): ``{"time": unix seconds, "role": ..., "step": ..., "<name>": value, ...}``.
Non-finite values are written as ``null`` so that every line is strict JSON (browsers reject ``NaN``).
"""

from __future__ import annotations

import json
import math
import operator
import threading
import time as _time
import warnings
from pathlib import Path
from typing import Any, Iterable

from gspo_async.telemetry.names import ACTOR_ID_RE, COUNTER, HIST, Metric, actor_metric, lookup

METRICS_FILENAME = "metrics.jsonl"
RESERVED_KEYS = ("time", "role", "step")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # also takes numpy and 0-d torch scalars
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} takes a number, got {type(value).__name__}: {value!r}") from None


def _as_list(name: str, value: Any) -> list[float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"metric {name!r} is a histogram-list: pass a list of counts per bin "
                        f"(e.g. [12, 3, 1] for lags 0, 1, 2), got {type(value).__name__}: {value!r}")
    return [_as_float(name, v) for v in value]


def _json_value(value: float | list[float]) -> Any:
    if isinstance(value, list):
        return [v if math.isfinite(v) else None for v in value]
    return value if math.isfinite(value) else None


class MetricRegistry:
    """The metrics of one process (`role`: "learner", "actor", ...).

    run_dir: where ``metrics.jsonl`` goes (None: no file, only sinks and Prometheus).
    filename: the file's path relative to run_dir, e.g. ``"actors/a1/metrics.jsonl"`` for an actor.
    sinks: objects with ``log(step, values, time)`` and ``close()`` (TensorBoardSink, WandbSink).
    """

    def __init__(self, role: str, run_dir: str | Path | None, *, sinks: list | None = None,
                 filename: str = METRICS_FILENAME) -> None:
        if not isinstance(role, str) or not role:
            raise ValueError(f"role must be a non-empty string such as 'learner' or 'actor', got {role!r}")
        self.role = role
        self.sinks = list(sinks or [])
        self._values: dict[str, float | list[float]] = {}
        self._lock = threading.Lock()
        self._file = None
        self._prometheus = None
        self.path: Path | None = None
        if run_dir is not None:
            self.path = Path(run_dir) / filename
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            # A crash can leave a half-written last line; start on a fresh line so appended records stay intact.
            if self.path.stat().st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":
                        self._file.write("\n")
                        self._file.flush()

    # ----- recording -----
    def set(self, name: str, value: float | list[float]) -> None:
        """Set a gauge, a counter's total, or a histogram-list's whole list of per-bin counts."""
        spec = lookup(name)
        stored = _as_list(name, value) if spec.kind == HIST else self._scalar(spec, name, value)
        with self._lock:
            self._values[name] = stored

    def inc(self, name: str, amount: float = 1.0) -> None:
        """Add `amount` to a counter (amount >= 0) or a gauge."""
        spec = lookup(name)
        if spec.kind == HIST:
            raise TypeError(f"{name!r} is a histogram-list: use observe(name, bin, amount) or set(name, list)")
        amount = _as_float(name, amount)
        if spec.kind == COUNTER and not amount >= 0:
            raise ValueError(f"counter {name!r} only grows: inc amount must be >= 0, got {amount}")
        with self._lock:
            self._values[name] = float(self._values.get(name, 0.0)) + amount

    def observe(self, name: str, index: int, amount: float = 1.0) -> None:
        """Add `amount` to bin `index` of a histogram-list, growing the list with zeros as needed.

        E.g. ``observe("staleness/hist", lag)`` and ``observe("staleness/hist_tokens", lag, n_tokens)``.
        """
        spec = lookup(name)
        if spec.kind != HIST:
            raise TypeError(f"{name!r} is a {spec.kind}, not a histogram-list: use set or inc")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"bin index of {name!r} must be an int >= 0, got {index!r}")
        amount = _as_float(name, amount)
        with self._lock:
            counts = list(self._values.get(name, []))
            counts.extend([0.0] * (index + 1 - len(counts)))
            counts[index] += amount
            self._values[name] = counts

    def update(self, values: dict[str, float | list[float]]) -> None:
        """`set` every item; nothing is stored if any name or value is invalid."""
        checked: dict[str, float | list[float]] = {}
        for name, value in values.items():
            spec = lookup(name)
            checked[name] = _as_list(name, value) if spec.kind == HIST else self._scalar(spec, name, value)
        with self._lock:
            self._values.update(checked)

    def set_actor(self, actor_id: str, stats: dict[str, float]) -> None:
        """Record an actor's heartbeat statistics, keyed by suffix: ``{"tokens_per_s": 812.0, "version": 7}``."""
        self.update({actor_metric(actor_id, suffix): v for suffix, v in stats.items()})

    def forget_actor(self, actor_id: str) -> None:
        """Stop exporting a departed actor's metrics (its past records stay in the JSONL)."""
        prefix = f"actor/{actor_id}/"
        with self._lock:
            for name in [n for n in self._values if n.startswith(prefix)]:
                del self._values[name]

    @staticmethod
    def _scalar(spec: Metric, name: str, value: Any) -> float:
        if isinstance(value, (list, tuple)):
            raise TypeError(f"metric {name!r} is a {spec.kind}: pass one number, not a list")
        return _as_float(name, value)

    # ----- reading and exporting -----
    def snapshot(self) -> dict[str, float | list[float]]:
        """A copy of every current value (lists copied too)."""
        with self._lock:
            return {k: (list(v) if isinstance(v, list) else v) for k, v in self._values.items()}

    def log(self, step: int, *, time: float | None = None) -> dict[str, Any]:
        """Append one JSONL record with time, role, step and every current value; push the values to the sinks.

        time: unix seconds of the record (default: now). Returns the record written.
        """
        try:
            if isinstance(step, bool):
                raise TypeError
            step = operator.index(step)  # int, numpy or 0-d torch integers; never a float
        except TypeError:
            raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}") from None
        now = _time.time() if time is None else float(time)
        values = self.snapshot()
        record: dict[str, Any] = {"time": now, "role": self.role, "step": step}
        record.update({k: _json_value(v) for k, v in sorted(values.items())})
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)  # one write per line: a reader never sees two records interleaved
                self._file.flush()
        for sink in self.sinks:
            try:
                sink.log(step, values, now)
            except Exception as err:  # a W&B or TensorBoard hiccup must not stop training; the JSONL has it all
                warnings.warn(f"{type(sink).__name__} failed to log step {step}: {err!r}", RuntimeWarning,
                              stacklevel=2)
        return record

    def serve_prometheus(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Prometheus text at ``http://host:port/metrics`` from a background thread; returns the bound port."""
        from gspo_async.telemetry.prometheus import PrometheusServer

        if self._prometheus is not None:
            raise RuntimeError(f"this registry already serves Prometheus on port {self._prometheus.port}; "
                               "call close() first")
        self._prometheus = PrometheusServer(self, host, port)
        return self._prometheus.port

    def close(self) -> None:
        """Stop the Prometheus thread, close the JSONL file and the sinks. Safe to call twice."""
        if self._prometheus is not None:
            self._prometheus.close()
            self._prometheus = None
        if self._file is not None:
            with self._lock:
                self._file.close()
                self._file = None
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> "MetricRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def actor_filename(actor_id: str) -> str:
    """Where an actor writes its own records inside the run directory: ``actors/<id>/metrics.jsonl``."""
    if not ACTOR_ID_RE.match(actor_id):
        raise ValueError(f"actor id {actor_id!r} may only use letters, digits and _.:@- (at most 128 characters)")
    return f"actors/{actor_id}/{METRICS_FILENAME}"


# ----- reading JSONL -----
def _metrics_path(run_dir: str | Path, filename: str) -> Path:
    path = Path(run_dir)
    return path if path.is_file() else path / filename


def read_metrics(run_dir: str | Path, filename: str = METRICS_FILENAME) -> list[dict]:
    """Every record of ``<run_dir>/<filename>`` (or of the JSONL file `run_dir` itself), oldest first.

    A partially written last line (a writer mid-append, or a crash) is skipped; so is any other line that is not
    a JSON object (with a warning). A missing file is an error naming the path.
    """
    path = _metrics_path(run_dir, filename)
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}: pass the run directory the learner wrote "
                                f"(it holds {filename}) or the JSONL file itself")
    records, end = read_metrics_from(path, 0)
    tail = path.read_bytes()[end:].strip()
    if tail:  # no newline yet: keep the line only if it is already a whole JSON object
        try:
            record = json.loads(tail)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics_from(path: str | Path, offset: int, max_bytes: int | None = None) -> tuple[list[dict], int]:
    """Records from byte `offset` on, and the offset just past the last complete line read.

    Only whole lines (ending in a newline) are parsed, so a line still being written is left for the next call.
    max_bytes: read at most this much (at least one whole line is returned if one exists).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read() if max_bytes is None else f.read(max_bytes)
        if max_bytes is not None and b"\n" not in data:
            data += f.readline()  # a single line longer than max_bytes: still make progress
    end = data.rfind(b"\n") + 1
    records: list[dict] = []
    for number, line in enumerate(data[:end].splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            warnings.warn(f"{path}: skipped a malformed line at byte {offset} + line {number}: {line[:80]!r}",
                          stacklevel=2)
            continue
        records.append(record)
    return records, offset + end


def iter_names(records: Iterable[dict]) -> list[str]:
    """Every metric name seen in `records`, sorted (the reserved keys time, role and step excluded)."""
    seen: set[str] = set()
    for r in records:
        seen.update(k for k in r if k not in RESERVED_KEYS)
    return sorted(seen)


__all__ = ["MetricRegistry", "read_metrics", "read_metrics_from", "iter_names", "actor_filename", "METRICS_FILENAME"]
