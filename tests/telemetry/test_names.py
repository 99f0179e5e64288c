"""The metric-name contract: design §5 names present, every entry well formed, Prometheus names unique."""

import math
import re

import pytest

from gspo_async.telemetry.names import (ACTOR_METRICS, COUNTER, EVENTS, GAUGE, HIST, KINDS, LAG_BINS, LENGTH_BINS,
                                        METRICS, N_LENGTH_BINS, WINDOWS, actor_metric, bin_label, bin_upper,
                                        length_bin, lookup, prometheus_name, split_actor_name)

# design.md §5, verbatim.
DESIGN_NAMES = [
    "train/step", "train/version", "train/loss", "train/pg_loss", "train/kl_loss", "train/entropy", "train/grad_norm",
    "train/clipfrac", "train/clipfrac_seq", "train/ratio_mean", "train/ratio_max", "train/is_weight_mean",
    "train/is_weight_max", "reward/mean", "reward/std", "eval/accuracy", "staleness/mean", "staleness/max",
    "staleness/hist", "staleness/dropped", "staleness/dropped_tokens", "throughput/gen_tokens_per_s",
    "throughput/train_tokens_per_s", "throughput/samples_per_s", "learner/busy_frac", "learner/wait_s",
    "buffer/groups", "leases/in_flight", "actors/alive", "weights/sync_s", "weights/bytes", "weights/version_skew_max",
]
# Required by the telemetry issue on top of design §5.
ISSUE_NAMES = ["staleness/hist_tokens", "buffer/age_mean_s", "leases/age_mean_s", "drops/length_hist_dropped",
               "drops/length_hist_kept", "response/length_mean", "learner/busy_frac_since_start", "leases/capacity"]


@pytest.mark.parametrize("name", DESIGN_NAMES + ISSUE_NAMES)
def test_contract_names_are_listed(name):
    assert name in METRICS


def test_actor_family_has_the_design_suffixes():
    assert {"tokens_per_s", "version"} <= set(ACTOR_METRICS)


@pytest.mark.parametrize("spec", list(METRICS.values()) + list(ACTOR_METRICS.values()), ids=lambda s: s.name)
def test_every_entry_is_well_formed(spec):
    assert spec.kind in KINDS
    assert spec.description and "\n" not in spec.description and len(spec.description) < 120
    assert re.fullmatch(r"[a-z0-9_/]+", spec.name)
    assert (spec.bins in (LAG_BINS, LENGTH_BINS)) == (spec.kind == HIST)
    assert spec.window in WINDOWS
    assert bool(spec.prometheus) == (spec.kind == HIST)  # every histogram-list is a named Prometheus histogram


def test_event_markers_are_counters_or_the_start_time():
    for name in EVENTS:
        assert METRICS[name].kind == COUNTER or name == "learner/started_at", name
    assert METRICS["learner/started_at"].kind == GAUGE


def test_staleness_hists_are_lists_by_lag():
    assert METRICS["staleness/hist"].kind == HIST and METRICS["staleness/hist"].bins == LAG_BINS
    assert METRICS["staleness/hist_tokens"].bins == LAG_BINS
    assert METRICS["drops/length_hist_dropped"].bins == LENGTH_BINS


def test_prometheus_names_are_valid_and_unique():
    exported = [prometheus_name(n) for n in METRICS] + [prometheus_name(f"actor/x/{s}") for s in ACTOR_METRICS]
    assert len(exported) == len(set(exported))
    for p in exported:
        assert re.fullmatch(r"gspo_[a-zA-Z_:][a-zA-Z0-9_:]*", p)


def test_no_name_ends_in_a_suffix_openmetrics_reserves():
    # Scrapers that speak OpenMetrics strip `_total` from counters: `x_total` would collide with a gauge `x`.
    for name in list(METRICS) + list(ACTOR_METRICS):
        assert not re.search(r"_(total|created|count|sum|bucket|info)$", name), name


def test_prometheus_name_mapping():
    assert prometheus_name("train/loss") == "gspo_train_loss"
    assert prometheus_name("throughput/gen_tokens_per_s") == "gspo_throughput_gen_tokens_per_s"
    assert prometheus_name("actor/gpu-0/tokens_per_s") == "gspo_actor_tokens_per_s"
    assert prometheus_name("staleness/hist") == "gspo_staleness"
    assert prometheus_name("drops/length_hist_kept") == "gspo_response_length_trained"


def test_unknown_name_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown metric name 'train/los'.*'train/loss'.*names\.py"):
        lookup("train/los")
    with pytest.raises(TypeError):
        lookup(3)


def test_actor_family_is_validated_by_suffix():
    assert lookup("actor/a1/tokens_per_s") is ACTOR_METRICS["tokens_per_s"]
    assert actor_metric("host-12.3:a", "version") == "actor/host-12.3:a/version"
    assert split_actor_name("actor/a1/version") == ("a1", "version")
    assert split_actor_name("actors/alive") is None
    with pytest.raises(ValueError, match="unknown per-actor metric suffix 'speed'"):
        lookup("actor/a1/speed")
    with pytest.raises(ValueError, match="must look like 'actor/<id>/<suffix>'"):
        lookup("actor/a1/x/tokens_per_s")
    with pytest.raises(ValueError, match="actor id 'a b'"):
        lookup("actor/a b/tokens_per_s")


# The bit length of the token count, as the coordinator bins each response: bin b holds [2^(b-1), 2^b - 1].
@pytest.mark.parametrize("tokens, index", [(0, 0), (1, 1), (1.9, 1), (2, 2), (3, 2), (4, 3), (7, 3), (8, 4), (15, 4),
                                           (16, 5), (127, 7), (128, 8), (2 ** 16 - 1, 16), (2 ** 16, 17),
                                           (10 ** 9, N_LENGTH_BINS - 1)])
def test_length_bin_by_hand(tokens, index):
    assert length_bin(tokens) == index


def test_every_length_lands_in_the_bin_its_label_names():
    spec = METRICS["drops/length_hist_kept"]
    for n in range(0, 3000):
        label = bin_label(spec, length_bin(n))
        lo, _, hi = label.partition("-")
        assert int(lo) <= n <= int(hi or lo), (n, label)
        assert n <= bin_upper(spec, length_bin(n))


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_length_bin_rejects_bad_lengths(bad):
    with pytest.raises(ValueError, match="finite number of tokens"):
        length_bin(bad)


def test_bin_labels():
    assert bin_label(METRICS["staleness/hist"], 3) == "3"
    spec = METRICS["drops/length_hist_kept"]
    assert [bin_label(spec, i) for i in range(5)] == ["0", "1", "2-3", "4-7", "8-15"]
    assert bin_label(spec, 7) == "64-127"
    assert bin_label(spec, N_LENGTH_BINS - 1) == f"{2 ** (N_LENGTH_BINS - 2)}+"
    assert bin_upper(spec, 4) == 15 and bin_upper(spec, 0) == 0 and math.isinf(bin_upper(spec, N_LENGTH_BINS - 1))
    assert bin_upper(METRICS["staleness/hist"], 2) == 2


def test_the_coordinator_bins_with_the_same_definition():
    from gspo_async.learner import coordinator

    assert coordinator.length_bin is length_bin


def test_docs_table_is_generated_from_the_list():
    from pathlib import Path

    from gspo_async.telemetry.names import metrics_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "telemetry.md").read_text()
    table = doc.split("<!-- metrics:begin -->\n")[1].split("<!-- metrics:end -->")[0]
    assert table == metrics_markdown(), "docs/telemetry.md's table is out of date: python tools/metrics_table.py"
