"""Static report of a run: one HTML page with a summary table and PNG plots (matplotlib, Agg backend).

``gspo-async report RUN_DIR [--out DIR]`` writes ``DIR/index.html`` (default ``RUN_DIR/report/``) and one PNG per
figure next to it (see `plots.FIGURES`). The page needs no server and no network.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from gspo_async.dashboard.plots import FIGURES, actor_ids, last_value, mark_events, series
from gspo_async.dashboard.summary import COUNTS, DROP_REASONS, run_summary
from gspo_async.telemetry.names import RATE_WINDOW_S
from gspo_async.telemetry.registry import read_metrics

INSTALL_HINT = "python -m pip install 'gspo-async[report]'  (or: python -m pip install matplotlib)"


class MissingExtraError(RuntimeError):
    """An optional dependency of a command is not installed; the message names the install command."""


# ----- summary -----
def summary(records: list[dict], now: float | None = None) -> list[tuple[str, str]]:
    """(label, value) rows describing the run; counts and drops come from `dashboard.summary.run_summary`, the
    numbers the live dashboard shows."""
    first, last = records[0], records[-1]
    digest = run_summary(records, now if now is not None else time.time())

    def avg(key: str, tail: int | None = None) -> float | None:
        _, ys = series(records, key)
        ys = ys[-tail:] if tail else ys
        return sum(ys) / len(ys) if ys else None

    def fmt(v: Any, spec: str = ".4g", suffix: str = "") -> str:
        return "–" if v is None else f"{v:{spec}}{suffix}"

    state = {"ended": "ended (final record written)", "live": "running", "stopped": "stopped without a final record"}
    rows = [("records", str(len(records))), ("run", state.get(digest["state"], digest["state"])),
            ("steps", fmt(last_value(records, "train/step") or last["step"], "g")),
            ("final weight version", fmt(last_value(records, "train/version"), "g")),
            ("wall time", fmt((last["time"] - first["time"]) / 60, ".1f", " min")),
            ("reward (mean of last 5 records)", fmt(avg("reward/mean", 5))),
            ("final eval accuracy", fmt(_scaled(last_value(records, "eval/accuracy")), ".1f", " %"))]
    _, acc = series(records, "eval/accuracy")
    rows.append(("best eval accuracy", fmt(100 * max(acc), ".1f", " %") if acc else "–"))
    for key, label in (("staleness/hist", "groups"), ("staleness/hist_tokens", "tokens")):
        hist = last_value(records, key)
        if isinstance(hist, list) and sum(c or 0 for c in hist) > 0:
            total = sum(c or 0 for c in hist)
            mean = sum(i * (c or 0) for i, c in enumerate(hist)) / total
            shares = ", ".join(f"{i}: {100 * (c or 0) / total:.1f}%" for i, c in enumerate(hist))
            rows.append((f"staleness, {label}-weighted", f"mean {mean:.3f} versions ({shares})"))
    rows += [(label, fmt(digest["counts"][key], ",.0f")) for key, label in COUNTS]
    rates, busy = digest["rates"], digest["busy"]
    rows += [(f"generated tokens/s (last {RATE_WINDOW_S:g} s)", fmt(rates["throughput/gen_tokens_per_s"], ",.0f")),
             (f"trained tokens/s (last {RATE_WINDOW_S:g} s, waits included)",
              fmt(rates["throughput/train_tokens_per_s"], ",.0f")),
             (f"learner busy (last {RATE_WINDOW_S:g} s)", fmt(_scaled(busy["window"]), ".1f", " %")),
             ("learner busy (since start)", fmt(_scaled(busy["since_start"]), ".1f", " %")),
             ("bottleneck", f"{digest['bottleneck']['label']}: {digest['bottleneck']['reason']}"),
             ("weight syncs", fmt(last_value(records, "weights/syncs"), "g")),
             ("weight sync failures", fmt(last_value(records, "weights/failures"), "g")),
             ("weight sync (mean)", fmt(avg("weights/sync_s"), ".3f", " s")),
             ("weight sync size", fmt(_mib(last_value(records, "weights/bytes")), ".1f", " MiB"))]
    drops = [f"{label} {digest['drops'][key]:g} {unit}" for key, label, unit in DROP_REASONS
             if digest["drops"][key] is not None]
    rows.append(("drops", ", ".join(drops) if drops else "none recorded"))
    kinds: dict[str, int] = {}
    for e in digest["events"]:
        kinds[e["label"]] = kinds.get(e["label"], 0) + 1
    rows.append(("events", ", ".join(f"{k} ×{n}" for k, n in kinds.items()) or "none"))
    rows.append(("actors seen", ", ".join(actor_ids(records)) or "–"))
    return rows


def _scaled(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _mib(v: float | None) -> float | None:
    return None if v is None else v / 2 ** 20


def _actor_rows(records: list[dict], state: str) -> list[list[str]]:
    """One row per actor seen: its state (``run ended`` once the learner wrote its final record), versions, lag and
    totals from the newest values."""
    rows = []
    last = records[-1]
    for a in actor_ids(records):
        _, rates = series(records, f"actor/{a}/tokens_per_s")
        present = last.get(f"actor/{a}/alive") == 1
        shown = "run ended" if state == "ended" else ("alive" if present else "left")

        def latest(suffix: str, spec: str = "g") -> str:
            v = last_value(records, f"actor/{a}/{suffix}")
            return "–" if v is None else format(v, spec)

        rows.append([a, shown, latest("version"), latest("delivered_version"), latest("version_lag"),
                     f"{sum(rates) / len(rates):,.0f}" if rates else "–", latest("tokens", ",.0f"),
                     latest("groups", ",.0f")])
    return rows


# ----- output -----
def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and one PNG per figure for the run in `run_dir`; returns the HTML path.

    Raises MissingExtraError (naming the install command) without matplotlib, the ``report`` extra.
    """
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"gspo-async report draws its plots with matplotlib, which is not installed "
                                f"({err}). Install the report extra: {INSTALL_HINT}") from None

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{Path(run_dir)} has an empty metrics file: nothing to report yet (the learner writes a "
                         "record every telemetry.log_every_s seconds)")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else (run_dir if run_dir.is_dir() else run_dir.parent) / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, title, draw in FIGURES:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), dpi=100)
        try:
            draw(records, axes)
            for ax in axes:  # event markers on every chart over steps
                if ax.get_xlabel() == "optimiser step" and ax.has_data() and mark_events(ax, records):
                    ax.legend(fontsize=8, frameon=False)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png")
        finally:
            plt.close(fig)
        sections.append(f'<h2>{html.escape(title)}</h2><img src="{name}.png" alt="{html.escape(title)}">')
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary(records))
    actors = _actor_rows(records, run_summary(records, time.time())["state"])
    actor_table = ""
    if actors:
        head = "".join(f"<th>{h}</th>" for h in ("actor", "state", "applied version", "delivered version",
                                                   "lag (versions)", "mean tokens/s", "tokens", "groups"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in actors)
        actor_table = f'<h2>Actors</h2><table class="actors"><tr>{head}</tr>{body}</table>'
    name = (run_dir if run_dir.is_dir() else run_dir.parent).resolve().name
    page = _PAGE.format(title=html.escape(name), rows=rows, actors=actor_table, sections="\n".join(sections))
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · gspo-async report</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Arial, sans-serif; max-width: 1240px; margin: 24px auto;
       color: #1d2430; padding: 0 16px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 16px; margin: 28px 0 8px; }}
.sub {{ color: #667; margin-bottom: 16px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ padding: 4px 12px; border-bottom: 1px solid #e3e6ea; text-align: left; }}
table.summary th {{ color: #556; font-weight: 500; }}
table.actors td {{ text-align: right; }} table.actors td:first-child {{ text-align: left; }}
img {{ width: 100%; max-width: 1200px; border: 1px solid #e3e6ea; border-radius: 4px; }}
</style></head>
<body>
<h1>gspo-async run report: {title}</h1>
<div class="sub">Static report from metrics.jsonl. Live view: <code>gspo-async dashboard RUN_DIR</code>.</div>
<table class="summary">{rows}</table>
{actors}
{sections}
</body></html>
"""
