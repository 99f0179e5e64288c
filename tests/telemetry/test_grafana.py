"""tools/grafana/gspo_async.json: valid JSON, and every metric it queries is exported by a live endpoint."""

import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gspo_async.telemetry import ACTOR_METRICS, METRICS, MetricRegistry
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


def test_every_queried_metric_is_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {m for e in exprs(dashboard) for m in re.findall(r"\bgspo_[a-z0-9_]+", e)}
    assert len(queried) > 40
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
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert queried - set(families) == set(), "the dashboard queries metrics nobody exports"
    # Labels the queries group by must exist on those metrics.
    for e in exprs(dashboard):
        for label in re.findall(r"by \((\w+)\)", e):
            for metric in re.findall(r"\bgspo_[a-z0-9_]+", e):
                assert all(label in s.labels for s in families[metric].samples), (label, metric)
