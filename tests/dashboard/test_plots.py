"""Report plots: the data helpers by hand, every figure drawn with data from a run."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gspo_async.dashboard.plots import FIGURES, actor_ids, interval_counts, is_number, last_value, series  # noqa: E402
from gspo_async.telemetry import read_metrics  # noqa: E402


def test_interval_counts_by_hand():
    records = [{"step": 1, "staleness/hist": [2, 1]}, {"step": 2},  # a record without the list is skipped
               {"step": 3, "staleness/hist": [5, 1, 4]},
               {"step": 4, "staleness/hist": [1, 0]}]  # the writer restarted: counts start again
    assert interval_counts(records, "staleness/hist") == [(1, [2, 1]), (3, [3, 0, 4]), (4, [1, 0])]


def test_series_skips_nulls_and_lists():
    records = [{"step": 1, "train/loss": 0.5}, {"step": 2, "train/loss": None}, {"step": 3, "train/loss": [1]},
               {"step": 4, "train/loss": True}, {"step": 5, "train/loss": 0.25}]
    assert series(records, "train/loss") == ([1, 5], [0.5, 0.25])
    assert last_value(records, "train/loss") == 0.25 and last_value(records, "reward/mean") is None
    assert not is_number(float("nan")) and is_number(3)
    assert actor_ids([{"actor/b/version": 1, "actor/a/tokens": 2, "actors/alive": 2}]) == ["a", "b"]


def test_every_figure_draws_data(run_dir):
    records = read_metrics(run_dir)
    for name, _, draw in FIGURES:
        fig, axes = plt.subplots(1, 2)
        try:
            draw(records, axes)
            for ax in axes:
                texts = [t.get_text() for t in ax.texts]
                assert "no data" not in texts, f"{name}: {ax.get_title()}"
                assert ax.lines or ax.patches or ax.collections, f"{name}: {ax.get_title()} is empty"
        finally:
            plt.close(fig)


def test_figures_say_no_data_when_empty():
    fig, axes = plt.subplots(1, 2)
    try:
        FIGURES[0][2]([{"time": 0.0, "role": "learner", "step": 0}], axes)
        assert [t.get_text() for ax in axes for t in ax.texts] == ["no data", "no data"]
    finally:
        plt.close(fig)


def test_accuracy_points_only_where_an_evaluation_ran():
    from gspo_async.dashboard.plots import evaluations

    records = [{"step": 0, "eval/accuracy": 0.3, "eval/runs": 1}, {"step": 1, "eval/accuracy": 0.3, "eval/runs": 1},
               {"step": 2, "eval/accuracy": 0.3, "eval/runs": 2},  # same accuracy, but a new evaluation
               {"step": 3, "eval/accuracy": 0.5, "eval/runs": 2},  # cannot happen; still no new point
               {"step": 4, "eval/accuracy": 0.6, "eval/runs": 3}]
    assert evaluations(records) == ([0, 2, 4], [0.3, 0.3, 0.6])
    old = [{"step": 0, "eval/accuracy": 0.3}, {"step": 1, "eval/accuracy": 0.3}, {"step": 2, "eval/accuracy": 0.4}]
    assert evaluations(old) == ([0, 2], [0.3, 0.4])  # records of older runs: every change


def test_event_markers_are_drawn_per_event(run_dir):
    from gspo_async.dashboard.plots import mark_events

    records = read_metrics(run_dir)
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 60], [0, 1])
        n = mark_events(ax, records)
        # The synthetic run: 3 joins at step 1 (one event), a join at 20, a leave at 40, 6 evaluations, 2 checkpoints,
        # 1 weight-sync failure.
        assert n == 1 + 1 + 1 + 6 + 2 + 1
        labels = {t.get_text() for t in ax.legend().get_texts()}
        assert {"evaluation", "checkpoint", "actor joined", "actor left", "weight-sync failure"} <= labels
    finally:
        plt.close(fig)
