"""Every count the dashboard and the report show equals what the run's ledger and the actors' acknowledgements say.

The run (tests/dashboard/forced_drops.py) is real: a learner and three simulated actors in separate processes, one
slow enough that its groups arrive too stale and one slower than its lease. Nothing here is computed from the
metrics themselves: trained and dropped prompts come from ``ledger.jsonl`` (learner/ledger.py), duplicates and
late groups from the acknowledgements each actor logged, token totals from the coordinator's own tallies in
``summary.json``. The test also checks that every metric the page, the report and the Grafana dashboard name was
written by this run, and that the learner's Prometheus port served real histogram buckets.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from gspo_async.dashboard.report import summary as report_summary
from gspo_async.dashboard.server import STATIC_DIR, DashboardServer
from gspo_async.dashboard.summary import COUNTS, DROP_REASONS
from gspo_async.learner.ledger import replay
from gspo_async.telemetry import read_metrics
from gspo_async.telemetry.names import ACTOR_METRICS, METRICS, lookup
from tests.dashboard.forced_drops import ACTOR_IDS, GROUP_SIZE
from tests.telemetry.test_grafana import DASHBOARD, queried_series, registry_names

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def fetch(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def dashboard_view(run_dir: Path) -> tuple[dict, dict]:
    """The newest learner record as the page receives it (every /api/metrics chunk) and /api/summary."""
    with DashboardServer(run_dir, max_bytes=8_000) as server:
        records, offset = [], 0
        while True:
            data = fetch(f"{server.url}api/metrics?since={offset}")
            records += data["records"]
            offset = data["offset"]
            if not data["more"]:
                break
        return records[-1], fetch(f"{server.url}api/summary")


def expected_counts(forced) -> dict[str, float]:
    """Each count from a source the metrics do not feed: the ledger, the acknowledgement logs, summary.json."""
    ledger = replay(forced.run_dir)
    assert not ledger.repeated and ledger.starts == 1
    counters = json.loads((forced.run_dir / "summary.json").read_text())["counters"]
    reasons = ledger.drop_reasons
    known = {"stale", "lease_attempts", "prompt_too_long"}
    return {
        "train/groups": len(ledger.trained),
        "train/samples": len(ledger.trained) * GROUP_SIZE,
        "train/tokens": counters["tokens_trained"],  # the ledger keeps no token counts: the coordinator's tally
        "staleness/dropped": reasons["stale"],
        "drops/lease_attempts": reasons["lease_attempts"],
        "drops/prompt_too_long": reasons["prompt_too_long"],
        "drops/other": sum(n for r, n in reasons.items() if r not in known),
        "drops/duplicate": forced.acks["duplicate"],
        "drops/late": forced.acks["dropped"],
        "drops/invalid": 0,  # every actor here sends valid groups
        "leases/expired": counters["leases_expired"],
        "leases/granted": counters["leases_issued"],
    }


def test_the_run_dropped_what_it_was_made_to(forced_run):
    counters = json.loads((forced_run.run_dir / "summary.json").read_text())["counters"]
    ledger = replay(forced_run.run_dir)
    assert ledger.drop_reasons["stale"] >= 10, (ledger.drop_reasons, forced_run.learner_log[-3000:])
    assert counters["leases_expired"] >= 2, counters
    # Every group an actor was told 'accepted' ended trained or dropped as stale, or was still queued at the end.
    stale_groups = sum(1 for r in ledger.dropped.values() if r["reason"] == "stale" and r.get("group_id"))
    assert forced_run.acks["accepted"] == (len(ledger.trained) + stale_groups + counters["buffered"]
                                           + counters["training"]), (forced_run.acks, counters)


def test_dashboard_and_report_show_the_ledgers_counts(forced_run):
    expected = expected_counts(forced_run)
    record, summary = dashboard_view(forced_run.run_dir)
    assert record.get("learner/finished") == 1  # the final record, written after the last ledger lines
    assert summary["state"] == "ended"
    for name, value in expected.items():
        assert record[name] == value, (name, record[name], value)
    shown = {**summary["counts"], **summary["drops"]}
    for name, value in expected.items():
        if name in shown:
            assert shown[name] == value, (name, shown[name], value)
    # The report prints the same numbers.
    rows = dict(report_summary(read_metrics(forced_run.run_dir), now=time.time()))
    for key, label in COUNTS:
        if key in expected:
            assert rows[label] == f"{expected[key]:,.0f}", (label, rows[label], expected[key])
    for key, label, unit in DROP_REASONS:
        assert f"{label} {expected[key]:g} {unit}" in rows["drops"], (label, rows["drops"])
    assert rows["run"] == "ended (final record written)"


def test_trained_staleness_histogram_equals_the_ledger(forced_run):
    record, _ = dashboard_view(forced_run.run_dir)
    ledger_hist = replay(forced_run.run_dir).staleness()
    hist = record["staleness/hist"]
    assert {lag: n for lag, n in enumerate(hist) if n} == {lag: float(n) for lag, n in ledger_hist.items() if n}
    assert max(ledger_hist) <= 1  # max_staleness: nothing staler was trained


def test_every_step_record_carries_the_counters_up_to_that_step(forced_run):
    """Counters go into every step record, not only into records written while the learner waits: at each step
    the trained-groups counter equals the ledger's groups trained up to that step, and the stale-drop counter
    never falls behind the ledger's stale drops of earlier steps."""
    ledger = replay(forced_run.run_dir)
    trained_by_step = Counter(r["step"] for r in ledger.trained.values())
    stale_by_step = Counter(r["step"] for r in ledger.dropped.values() if r["reason"] == "stale")
    steps = [r for r in read_metrics(forced_run.run_dir) if "train/step" in r]
    assert len(steps) >= 5
    for rec in steps:
        step = int(rec["train/step"])
        assert rec.get("train/groups", 0) == sum(n for s, n in trained_by_step.items() if s <= step), (step, rec)
        assert rec.get("staleness/dropped", 0) >= sum(n for s, n in stale_by_step.items() if s < step), (step, rec)

def test_actor_lag_is_the_staleness_of_the_groups_it_delivered(forced_run):
    """actor/<id>/delivered_version is the oldest weight version of a group that actor delivered (the ledger lists
    it, unless the group was still queued when the run stopped: then it is newer than any the ledger has), and
    actor/<id>/version_lag is that group's staleness on arrival, so never more than the learner's version minus it:
    a heartbeat-timing lag would not be tied to the ledger's groups."""
    ledger = replay(forced_run.run_dir)
    versions: dict[str, set[int]] = defaultdict(set)
    for r in [*ledger.trained.values(), *ledger.dropped.values()]:
        if r.get("actor_id") and r.get("min_version") is not None:
            versions[r["actor_id"]].add(int(r["min_version"]))
    checked: Counter = Counter()
    for rec in read_metrics(forced_run.run_dir):
        for aid in ACTOR_IDS:
            delivered = rec.get(f"actor/{aid}/delivered_version")
            if delivered is None or delivered < 0:
                continue
            assert int(delivered) in versions[aid] or int(delivered) > max(versions[aid], default=-1), \
                (aid, delivered, sorted(versions[aid]))
            version = rec.get("train/version", 0.0)  # records before the first step have none: version 0
            assert 0 <= rec[f"actor/{aid}/version_lag"] <= version - delivered, (aid, rec)
            checked[aid] += 1
    assert checked["fast0"] >= 5, checked  # the fast actor delivered throughout the run


def _js_metric_names(text: str) -> set[str]:
    """Metric names a page script or plot module names as string literals ('train/loss', `actor/${id}/version`)."""
    names = set(re.findall(r"""['"`]((?:train|reward|eval|response|staleness|drops|throughput|learner|checkpoint|"""
                           r"""ledger|buffer|leases|actors|weights)/[a-z0-9_]+)['"`]""", text))
    names |= {f"actor/*/{s}" for s in re.findall(r"actor/\$\{[^}]+\}/([a-z0-9_]+)", text)}
    names |= {f"actor/*/{s}" for s in re.findall(r"actor/\{[^}]+\}/([a-z0-9_]+)", text)}
    for pair in re.findall(r"\bk\('([a-z0-9_]+)'\)|\bv\('([a-z0-9_]+)'\)", text):  # the actor table's helpers
        names |= {f"actor/*/{suffix}" for suffix in pair if suffix}
    return names


def written_names(run_dir: Path) -> set[str]:
    out = set()
    for r in read_metrics(run_dir):
        for key in r:
            if key.startswith("actor/"):
                out.add("actor/*/" + key.split("/")[2])
            elif key not in ("time", "role", "step"):
                out.add(key)
    return out


def test_every_metric_a_legend_or_grafana_names_was_written(forced_run):
    written = written_names(forced_run.run_dir)
    sources = {path.name: path.read_text() for path in STATIC_DIR.glob("*.js")}
    for module in ("plots.py", "report.py", "summary.py"):
        sources[module] = (ROOT / "gspo_async" / "dashboard" / module).read_text()
    for source, text in sources.items():
        named = _js_metric_names(text)
        for name in named:
            lookup(name.replace("*", "a"))  # a listed metric, or the test's pattern is wrong
        assert named - written == set(), f"{source} shows metrics no code wrote in this run: {named - written}"
    grafana = registry_names(queried_series(json.loads(DASHBOARD.read_text())))
    assert grafana - written == set(), f"the Grafana dashboard queries metrics this run never wrote: {grafana - written}"
    # And nothing listed in names.py is dead: every metric was written (the actor family through its suffixes).
    listed = {n for n, spec in METRICS.items() if not spec.when} | {f"actor/*/{s}" for s in ACTOR_METRICS}
    assert listed - written == set(), (f"names.py lists metrics no code wrote in this run: {listed - written}; "
                                       "write them, remove them, or name the setting that enables them (when=)")


def test_prometheus_port_served_real_histograms(forced_run):
    text = forced_run.scrape
    assert "# TYPE gspo_staleness histogram" in text
    buckets = re.findall(r'^gspo_staleness_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    assert buckets and buckets[-1][0] == "+Inf"
    counts = [float(v) for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] > 0  # cumulative
    assert re.search(r'^gspo_response_length_trained_bucket\{le="7"\} ', text, re.M)
    assert re.search(r"^gspo_train_groups_total \d", text, re.M)
