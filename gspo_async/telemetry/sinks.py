"""Optional sinks: TensorBoard event files and Weights & Biases runs, chosen by the config's telemetry section.

A sink gets every `MetricRegistry.log` call as ``log(step, values, time)``: scalars are logged as scalars,
histogram-lists (cumulative counts per bin) as histograms over their bins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gspo_async.telemetry.names import HIST, lookup


def _hist_stats(counts: list[float]) -> dict[str, Any] | None:
    """Summary of counts per integer bin 0..K, in TensorBoard's raw-histogram form; None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    return {
        "min": float(nonzero[0]), "max": float(nonzero[-1]), "num": float(total),
        "sum": float(sum(i * c for i, c in enumerate(counts))),
        "sum_squares": float(sum(i * i * c for i, c in enumerate(counts))),
        "bucket_limits": [i + 0.5 for i in range(len(counts))],  # bin i holds values in (i - 0.5, i + 0.5]
        "bucket_counts": [float(c) for c in counts],
    }


class TensorBoardSink:
    """Writes TensorBoard event files under `log_dir` (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("telemetry.tensorboard needs the tensorboard package: pip install tensorboard "
                              f"(or set telemetry.tensorboard: false). Import failed with: {err}") from err
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, values: dict[str, Any], time: float) -> None:
        for name, value in values.items():
            if lookup(name).kind == HIST:
                stats = _hist_stats(value)
                if stats is not None:
                    self._writer.add_histogram_raw(name, global_step=step, walltime=time, **stats)
            elif value == value:  # NaN would poison TensorBoard's axis range
                self._writer.add_scalar(name, value, global_step=step, walltime=time)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Logs to a Weights & Biases run; ``mode="offline"`` writes under ``<run_dir>/wandb`` with no network."""

    def __init__(self, project: str, mode: str = "offline", run_dir: str | Path | None = None,
                 config: dict | None = None, name: str | None = None) -> None:
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"telemetry.wandb_mode must be online, offline or disabled, got {mode!r}")
        try:
            import wandb
        except ImportError as err:
            raise ImportError("telemetry.wandb needs the wandb package: pip install wandb (or set "
                              f"telemetry.wandb: false). Import failed with: {err}") from err
        self._wandb = wandb
        directory = None
        if run_dir is not None:
            directory = str(Path(run_dir))
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, mode=mode, dir=directory, config=config, name=name)
        self._last_step = -1

    def log(self, step: int, values: dict[str, Any], time: float) -> None:
        if step <= self._last_step:  # W&B refuses steps that go back, and each step is committed once
            return
        self._last_step = step
        data: dict[str, Any] = {}
        for name, value in values.items():
            if lookup(name).kind == HIST:
                if sum(value) > 0:
                    edges = [i - 0.5 for i in range(len(value) + 1)]
                    data[name] = self._wandb.Histogram(np_histogram=(list(value), edges))
            else:
                data[name] = value
        self.run.log(data, step=step, commit=True)  # commit now: a step's record is complete when logged

    def close(self) -> None:
        self.run.finish()


def build_sinks(telemetry: Any, run_dir: str | Path | None, run_name: str | None = None) -> list:
    """The sinks a config's ``telemetry`` section asks for (fields tensorboard, wandb, wandb_project, wandb_mode).

    TensorBoard writes to ``<run_dir>/tensorboard``; W&B to ``<run_dir>/wandb``.
    """
    sinks: list = []
    if getattr(telemetry, "tensorboard", False):
        if run_dir is None:
            raise ValueError("telemetry.tensorboard needs a run directory to write event files into")
        sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard"))
    if getattr(telemetry, "wandb", False):
        sinks.append(WandbSink(telemetry.wandb_project, telemetry.wandb_mode, run_dir, name=run_name))
    return sinks
