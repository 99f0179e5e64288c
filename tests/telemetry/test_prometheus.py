"""Prometheus exposition over real HTTP (prometheus-client's server and a custom collector): names, labels, types,
values, real histograms; parsed by prometheus_client's parser."""

import math
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gspo_async.telemetry import ACTOR_METRICS, METRICS, MetricRegistry, prometheus_name
from gspo_async.telemetry.names import COUNTER, GAUGE, HIST, N_LENGTH_BINS, length_bin
from gspo_async.telemetry.prometheus import histogram_buckets, render


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(family name, labels) -> value. Keyed by family: the parser renames counter samples to `<name>_total`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(family.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_values_reach_a_live_endpoint():
    reg = MetricRegistry("learner", None)
    reg.set("train/loss", 0.25)
    reg.inc("staleness/dropped", 3)
    reg.observe("staleness/hist", 0, 5)
    reg.observe("staleness/hist", 2)
    reg.observe("drops/length_hist_kept", length_bin(100))  # a 100-token response: bin 7 = 64..127 tokens
    reg.set_actor("a1", {"tokens_per_s": 812.5, "version": 7})
    reg.set_actor("gpu-2", {"tokens_per_s": 100})
    port = reg.serve_prometheus()
    try:
        text, ctype = scrape(port)
        assert ctype.startswith("text/plain; version=0.0.4")
        assert "# TYPE gspo_train_loss gauge" in text
        assert "# TYPE gspo_staleness_dropped_total counter" in text
        assert "# TYPE gspo_staleness histogram" in text
        assert "# TYPE gspo_actor_tokens_per_s gauge" in text
        assert "\ngspo_staleness_dropped_total 3.0\n" in text
        assert text.count("# TYPE gspo_actor_tokens_per_s") == 1  # one family for every actor
        # Real histogram lines: cumulative buckets by lag, count, and the exact sum of the lags (5*0 + 1*2).
        for line in ['gspo_staleness_bucket{le="0"} 5.0', 'gspo_staleness_bucket{le="1"} 5.0',
                     'gspo_staleness_bucket{le="2"} 6.0', 'gspo_staleness_bucket{le="+Inf"} 6.0',
                     "gspo_staleness_count 6.0", "gspo_staleness_sum 2.0",
                     'gspo_response_length_trained_bucket{le="63"} 0.0',
                     'gspo_response_length_trained_bucket{le="127"} 1.0',
                     'gspo_response_length_trained_bucket{le="+Inf"} 1.0']:
            assert line in text.splitlines(), line
        assert "gspo_response_length_trained_sum" not in text  # length bins do not give the sum exactly
        got = samples(text)
        assert got[("gspo_train_loss", ())] == 0.25
        assert got[("gspo_staleness_dropped", ())] == 3.0
        assert got[("gspo_actor_tokens_per_s", (("actor", "a1"),))] == 812.5
        assert got[("gspo_actor_tokens_per_s", (("actor", "gpu-2"),))] == 100.0
        assert got[("gspo_actor_version", (("actor", "a1"),))] == 7.0
        # The endpoint is live: a new value shows on the next scrape.
        reg.set("train/loss", 0.125)
        assert samples(scrape(port)[0])[("gspo_train_loss", ())] == 0.125
    finally:
        reg.close()
    with pytest.raises(OSError):
        scrape(port)  # closed: nothing listens any more


def test_histogram_quantile_semantics_by_hand():
    # 6 groups at lags 0,0,0,0,1,3: the median lag is 0, the 5/6 quantile reaches lag 1, the max lag 3.
    buckets, total = histogram_buckets("staleness/hist", [4, 1, 0, 1])
    assert buckets == [("0", 4.0), ("1", 5.0), ("2", 5.0), ("3", 6.0), ("+Inf", 6.0)]
    assert total == 0 * 4 + 1 * 1 + 3 * 1
    tokens, weighted = histogram_buckets("staleness/hist_tokens", [100, 50])
    assert tokens == [("0", 100.0), ("1", 150.0), ("+Inf", 150.0)] and weighted == 50.0
    lengths, none = histogram_buckets("drops/length_hist_kept", [1, 0, 2])  # 1 empty response, 2 of 2-3 tokens
    assert lengths[:4] == [("0", 1.0), ("1", 1.0), ("3", 3.0), ("7", 3.0)] and none is None
    assert lengths[-1] == ("+Inf", 3.0) and len(lengths) == N_LENGTH_BINS
    with pytest.raises(ValueError, match="not a histogram-list"):
        histogram_buckets("train/loss", [1.0])


def test_every_listed_name_is_exported():
    reg = MetricRegistry("learner", None)
    for name, spec in METRICS.items():
        reg.set(name, [1.0, 2.0] if spec.kind == HIST else 1.0)
    reg.set_actor("a1", dict.fromkeys(ACTOR_METRICS, 1.0))
    port = reg.serve_prometheus()
    try:
        text, _ = scrape(port)
    finally:
        reg.close()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    expected = {prometheus_name(n) for n in METRICS} | {prometheus_name(f"actor/a1/{s}") for s in ACTOR_METRICS}
    assert expected == set(families)
    for name, spec in METRICS.items():
        assert families[prometheus_name(name)] == {HIST: "histogram", COUNTER: "counter", GAUGE: "gauge"}[spec.kind]


def test_non_finite_values_and_label_escaping():
    text = render({"train/loss": math.nan, "train/grad_norm": math.inf, "train/approx_kl": -math.inf,
                   "actor/a.b:c/version": 1.0})
    assert "gspo_train_loss NaN" in text and "gspo_train_grad_norm +Inf" in text
    assert "gspo_train_approx_kl -Inf" in text
    assert 'gspo_actor_version{actor="a.b:c"} 1.0' in text
    got = samples(text)
    assert math.isnan(got[("gspo_train_loss", ())])


def test_second_server_and_busy_port_errors():
    reg = MetricRegistry("learner", None)
    port = reg.serve_prometheus()
    try:
        with pytest.raises(RuntimeError, match="already serves Prometheus"):
            reg.serve_prometheus()
        other = MetricRegistry("learner", None)
        with pytest.raises(OSError, match=f"cannot serve Prometheus metrics on 127.0.0.1:{port}.*free port"):
            other.serve_prometheus(port=port)
    finally:
        reg.close()
