"""tools/grafana/gspo_async.json: valid JSON, every series it queries is exported by a live endpoint, staleness
percentiles come from the real Prometheus histogram. (That every queried metric is written by a real run is checked
in tests/dashboard/test_consistency.py, on the run it makes.)"""

import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gspo_async.telemetry import ACTOR_METRICS, METRICS, MetricRegistry, prometheus_name
from gspo_async.telemetry.names import HIST

DASHBOARD = Path(__file__).resolve().parents[2] / "tools" / "grafana" / "gspo_async.json"


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def exprs(dashboard: dict) -> list[str]:
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    found += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"  # chosen on import, no hard-coded data source


def queried_series(dashboard: dict) -> set[str]:
    """Every Prometheus series name the dashboard's queries, annotations and variables use."""
    return {m for e in exprs(dashboard) for m in re.findall(r"\bgspo_[a-z0-9_]+", e)}


def registry_names(series: set[str]) -> set[str]:
    """The registry metric (or actor suffix, as ``actor/*/<suffix>``) behind each exported series name."""
    back = {prometheus_name(n): n for n in METRICS}
    back.update({prometheus_name(f"actor/x/{s}"): f"actor/*/{s}" for s in ACTOR_METRICS})
    out = set()
    for name in series:
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            if suffix == "" or name.endswith(suffix):
                base = name[: len(name) - len(suffix)] if suffix else name
                if base in back:
                    out.add(back[base])
                    break
        else:
            raise AssertionError(f"{name} is no exported series of any metric in names.py")
    return out


def test_staleness_percentiles_use_the_prometheus_histogram():
    dashboard = json.loads(DASHBOARD.read_text())
    quantiles = [e for e in exprs(dashboard) if "histogram_quantile" in e]
    assert any("gspo_staleness_bucket" in e and "by (le)" in e for e in quantiles), quantiles
    assert any("gspo_staleness_tokens_bucket" in e for e in quantiles)


def test_every_queried_metric_is_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_series(dashboard)
    assert len(queried) > 40
    registry_names(queried)  # each maps back to a listed metric
    reg = MetricRegistry("learner", None)
    for name, spec in METRICS.items():
        reg.set(name, [1.0, 2.0] if spec.kind == HIST else 1.0)
    reg.set_actor("a1", dict.fromkeys(ACTOR_METRICS, 1.0))
    port = reg.serve_prometheus()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        reg.close()
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert queried - set(samples) == set(), "the dashboard queries series nobody exports"
    # Labels the queries group by must exist on those series.
    for e in exprs(dashboard):
        for label in re.findall(r"by \((\w+)\)", e):
            for metric in re.findall(r"\bgspo_[a-z0-9_]+", e):
                assert label in samples[metric].labels, (label, metric)
