"""Run plots for the static report: one matplotlib figure (two panels) per topic, from JSONL records.

Every function takes the records of `read_metrics` (oldest first) and plots against the optimiser step. The caller
picks the backend (the report uses Agg).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from gspo_async.dashboard.summary import DROP_REASONS, events
from gspo_async.telemetry.names import METRICS, RATE_WINDOW_S, bin_label

COLORS = ["#2f6fd0", "#e08a00", "#1f9e6e", "#d64545", "#7b52c9", "#149a9a", "#c2548f", "#7a8a20"]
LAG_COLORS = ["#2bb673", "#8fcb3f", "#e0c51f", "#f5a524", "#ef7a3a", "#e2504a", "#c03a6b", "#8e3bb0"]
# Event markers on every chart over steps: kind -> (color, line style).
EVENT_STYLES = {"eval/runs": ("#1f9e6e", ":"), "checkpoint/saves": ("#2f6fd0", ":"),
                "actors/joined": ("#7b52c9", "--"), "actors/left": ("#e08a00", "--"),
                "weights/failures": ("#d64545", "-"), "learner/started_at": ("#7a8a20", "-")}


# ----- data -----
def is_number(v: Any) -> bool:
    """True for a finite int or float (JSON null, lists and booleans are not numbers)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of every record holding a finite value for `key`."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if is_number(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def last_value(records: list[dict], key: str) -> Any:
    """The newest non-null value of `key` (a number or a list), or None."""
    for r in reversed(records):
        if r.get(key) is not None:
            return r[key]
    return None


def interval_counts(records: list[dict], key: str) -> list[tuple[int, list[float]]]:
    """Per-record increments of a cumulative histogram-list: [(step, counts per bin)]; a reset restarts from 0."""
    out, prev = [], None
    for r in records:
        cur = r.get(key)
        if not isinstance(cur, list):
            continue
        cur = [c if is_number(c) else 0.0 for c in cur]
        delta = cur if prev is None else [c - (prev[i] if i < len(prev) else 0.0) for i, c in enumerate(cur)]
        if any(d < 0 for d in delta):
            delta = cur
        out.append((r["step"], delta))
        prev = cur
    return out


def evaluations(records: list[dict]) -> tuple[list[float], list[float]]:
    """(steps, accuracies) of the records where an evaluation ran (``eval/runs`` grew); every record repeats the
    latest accuracy, so plotting them all would hide when evaluations happened. Records without ``eval/runs`` (older
    runs) fall back to every change of the accuracy."""
    xs, ys, prev_runs, prev_acc = [], [], None, None
    for r in records:
        acc, runs = r.get("eval/accuracy"), r.get("eval/runs")
        if is_number(acc) and ((is_number(runs) and runs != prev_runs) or (runs is None and acc != prev_acc)):
            xs.append(r["step"])
            ys.append(float(acc))
        prev_runs, prev_acc = (runs if is_number(runs) else prev_runs), acc
    return xs, ys


def actor_ids(records: list[dict]) -> list[str]:
    """Every actor id seen in an ``actor/<id>/<suffix>`` key, sorted."""
    ids = {k.split("/")[1] for r in records for k in r if k.startswith("actor/") and k.count("/") == 2}
    return sorted(ids)


# ----- plots -----
def _plot_lines(ax, records: list[dict], items: list[tuple[str, str]], ylabel: str, title: str,
                styles: dict[str, str] | None = None) -> bool:
    drawn = False
    for i, (key, label) in enumerate(items):
        xs, ys = series(records, key)
        if xs:
            ax.plot(xs, ys, label=label, color=COLORS[i % len(COLORS)], lw=1.5, ls=(styles or {}).get(key, "-"))
            drawn = True
    _finish(ax, title, ylabel, drawn)
    return drawn


def mark_events(ax, records: list[dict]) -> int:
    """Vertical lines at the steps of the run's events (evaluations, checkpoints, joins, leaves, weight-sync
    failures, resumes), one legend entry per kind; returns the number drawn."""
    seen: set[str] = set()
    n = 0
    for e in events(records):
        if not is_number(e["step"]):
            continue
        color, style = EVENT_STYLES.get(e["kind"], ("#888888", ":"))
        ax.axvline(e["step"], color=color, ls=style, lw=0.8, alpha=0.6,
                   label=None if e["kind"] in seen else e["label"])
        seen.add(e["kind"])
        n += 1
    return n


def _finish(ax, title: str, ylabel: str, drawn: bool, xlabel: str = "optimiser step") -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")


def _fig_reward(records, axes) -> None:
    ax = axes[0]
    xs, mean = series(records, "reward/mean")
    std = dict(zip(*series(records, "reward/std")))
    if xs:
        ax.plot(xs, mean, color=COLORS[0], lw=1.5, label="reward mean")
        band = [(x, m, std[x]) for x, m in zip(xs, mean) if x in std]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                            color=COLORS[0], alpha=0.15, label="± 1 std")
    _finish(axes[0], "Training reward", "reward", bool(xs))
    xs, acc = evaluations(records)
    if xs:
        axes[1].plot(xs, [100 * a for a in acc], "o-", color=COLORS[2], lw=1.5, ms=3, label="eval accuracy")
        axes[1].set_ylim(0, 100)
    _finish(axes[1], "Held-out accuracy", "accuracy (%)", bool(xs))


def _fig_staleness(records, axes) -> None:
    ax = axes[0]
    rows = [(s, d) for s, d in interval_counts(records, "staleness/hist") if sum(d) > 0]
    if rows:
        n = max(len(d) for _, d in rows)
        bottoms = [0.0] * len(rows)
        steps = [s for s, _ in rows]
        for lag in range(n):
            shares = [100 * (d[lag] if lag < len(d) else 0.0) / sum(d) for _, d in rows]
            ax.bar(steps, shares, bottom=bottoms, width=0.9 * _min_gap(steps), color=LAG_COLORS[min(lag, 7)],
                   label=f"lag {lag}", linewidth=0)
            bottoms = [b + s for b, s in zip(bottoms, shares)]
        ax.set_ylim(0, 100)
    _finish(ax, "Staleness of trained groups per interval", "share of groups (%)", bool(rows))
    ax = axes[1]
    groups, tokens = last_value(records, "staleness/hist"), last_value(records, "staleness/hist_tokens")
    drawn = False
    for j, (counts, label) in enumerate([(groups, "groups"), (tokens, "tokens")]):
        if isinstance(counts, list) and sum(c or 0 for c in counts) > 0:
            total = sum(c or 0 for c in counts)
            xs = [i + (j - 0.5) * 0.38 for i in range(len(counts))]
            ax.bar(xs, [100 * (c or 0) / total for c in counts], width=0.38, color=COLORS[j], label=label)
            ax.set_xticks(range(len(counts)))
            drawn = True
    _finish(ax, "Staleness over the whole run", "share (%)", drawn, xlabel="lag (versions)")


def _fig_throughput(records, axes) -> None:
    _plot_lines(axes[0], records, [("throughput/gen_tokens_per_s", "generated (accepted)"),
                                   ("throughput/train_tokens_per_s", "trained (achieved)")], "tokens / s",
                f"Throughput over the last {RATE_WINDOW_S:g} s of wall time")
    _plot_lines(axes[1], records, [(f"actor/{a}/tokens_per_s", a) for a in actor_ids(records)], "tokens / s",
                "Tokens/s per actor")


def _fig_learner(records, axes) -> None:
    ax = axes[0]
    xs, busy = series(records, "learner/busy_frac")
    if xs:
        ax.fill_between(xs, [100 * b for b in busy], color=COLORS[2], alpha=0.25)
        ax.plot(xs, [100 * b for b in busy], color=COLORS[2], lw=1.5, label=f"busy (last {RATE_WINDOW_S:g} s)")
        ax.set_ylim(0, 100)
    xs2, total = series(records, "learner/busy_frac_since_start")
    if xs2:
        ax.plot(xs2, [100 * b for b in total], color=COLORS[0], lw=1.2, ls="--", label="busy (since start)")
    _finish(ax, "Learner busy fraction", "busy (%)", bool(xs))
    _plot_lines(axes[1], records, [("buffer/groups", "buffered groups"), ("leases/in_flight", "leases in flight"),
                                   ("leases/capacity", "leases admission would grant"),
                                   ("actors/alive", "actors alive")], "count", "Buffer, leases and fleet")


def _fig_weights(records, axes) -> None:
    ax = axes[0]
    steps, sync, transfer, prev = [], [], [], None
    for r in records:
        n = r.get("weights/syncs")
        if is_number(n) and n != prev and is_number(r.get("weights/sync_s")):
            steps.append(r["step"])
            sync.append(r["weights/sync_s"])
            transfer.append(r.get("weights/transfer_s") if is_number(r.get("weights/transfer_s")) else 0.0)
        if is_number(n):
            prev = n
    if steps:
        w = 0.8 * _min_gap(steps)
        ax.bar(steps, sync, width=w, color="#5d8fd6", label="sync total")
        ax.bar(steps, transfer, width=w, color=COLORS[5], label="transfer")
    _finish(ax, "Weight sync per broadcast", "seconds", bool(steps))
    _plot_lines(axes[1], records, [("weights/version_skew_max", "worst actor lag")] +
                [(f"actor/{a}/version_lag", a) for a in actor_ids(records)], "versions",
                "Actor lag: learner version - oldest version of its newest group")


def _fig_drops(records, axes) -> None:
    _plot_lines(axes[0], records, [(k, f"{label} ({unit})") for k, label, unit in DROP_REASONS], "count (cumulative)",
                "Drops by reason")
    ax = axes[1]
    dropped = last_value(records, "drops/length_hist_dropped") or []
    kept = last_value(records, "drops/length_hist_kept") or []
    n = max(len(dropped), len(kept))
    sd, sk = sum(c or 0 for c in dropped), sum(c or 0 for c in kept)
    used = [i for i in range(n) if (i < len(dropped) and dropped[i]) or (i < len(kept) and kept[i])]
    if used:
        idx = list(range(used[0], used[-1] + 1))
        spec = METRICS["drops/length_hist_kept"]
        for j, (counts, total, label) in enumerate([(dropped, sd, "dropped"), (kept, sk, "trained")]):
            vals = [100 * (counts[i] if i < len(counts) and counts[i] else 0) / total if total else 0 for i in idx]
            ax.bar([k + (j - 0.5) * 0.4 for k in range(len(idx))], vals, width=0.4,
                   color=COLORS[3] if j == 0 else COLORS[0], label=f"{label} ({total:g})")
        ax.set_xticks(range(len(idx)), [bin_label(spec, i) for i in idx], rotation=30, fontsize=8)
    _finish(ax, "Length of responses: dropped vs trained", "share of responses (%)", bool(used),
            xlabel="response length (tokens, inclusive bins)")


def _fig_optimisation(records, axes) -> None:
    _plot_lines(axes[0], records, [("train/loss", "loss"), ("train/pg_loss", "pg loss"), ("train/kl_loss", "kl loss")],
                "loss", "Loss")
    _plot_lines(axes[1], records, [("train/clipfrac", "clipped tokens"), ("train/clipfrac_seq", "clipped sequences")],
                "fraction", "Clip fraction")


def _fig_ratio(records, axes) -> None:
    _plot_lines(axes[0], records, [("train/ratio_mean", "mean"), ("train/ratio_max", "max")], "ratio",
                "GSPO sequence ratio", {"train/ratio_max": "--"})
    axes[0].ticklabel_format(axis="y", useOffset=False)
    _plot_lines(axes[1], records, [("train/is_weight_mean", "mean"), ("train/is_weight_max", "max")], "weight",
                "Staleness-correction weights (exactly 1 unless decoupled)", {"train/is_weight_max": "--"})


def _fig_policy(records, axes) -> None:
    _plot_lines(axes[0], records, [("train/entropy", "entropy"), ("train/approx_kl", "KL(pi_old || pi_theta)")],
                "nats", "Entropy and KL")
    _plot_lines(axes[1], records, [("response/length_mean", "mean"), ("response/length_max", "max")], "tokens",
                "Response length", {"response/length_max": "--"})


FIGURES: list[tuple[str, str, Callable]] = [
    ("reward", "Reward and accuracy", _fig_reward),
    ("staleness", "Staleness", _fig_staleness),
    ("throughput", "Throughput", _fig_throughput),
    ("learner", "Learner and queues", _fig_learner),
    ("weights", "Weight sync", _fig_weights),
    ("drops", "Drops", _fig_drops),
    ("optimisation", "Loss and clipping", _fig_optimisation),
    ("ratio", "Ratios and importance weights", _fig_ratio),
    ("policy", "Policy and responses", _fig_policy),
]


def _min_gap(xs: list[float]) -> float:
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    return min(gaps) if gaps else 1.0
