"""A real short run that is made to drop groups: a learner and three simulated actors in separate processes.

- ``fast0`` takes a fraction of a second per batch, so the learner steps several times a second;
- ``slow0`` and ``slow1`` take about 6 s per batch (inside their 10 s lease), so their groups arrive several versions
  late and are dropped as too stale under ``max_staleness: 1``;
- ``late0`` takes about 13 s per batch, longer than its lease: its leases expire and are re-issued, and its groups
  arrive for prompts that were handed to another actor (superseded, de-duplicated or too stale).

The learner runs until its live status shows at least MIN_STALE stale drops and MIN_EXPIRED lease expiries (a
condition, not a duration), then is stopped with SIGTERM and writes its final record, ledger lines and summary.

Each swarm process logs every final acknowledgement (``<actor> <group> <status>``) so the counts the dashboard and
the report show can be checked against what the actors were told as well as against the ledger.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gspo_async.protocol.client import LearnerUnavailable
from gspo_async.protocol.status import query_status
from tests.integration.conftest import ROOT, Cluster, wait_for

MIN_STALE, MIN_EXPIRED = 10, 2
# ... and at least this many steps, so that the step-10 evaluation and checkpoint lie inside the time charts' range
# (the browser test checks the event markers drawn there; a fast machine meets the drop counts by step 6)
MIN_STEPS = 12
GROUP_SIZE = 4
OVERRIDES = ["rollout_batch_size=4", f"num_return_sequences_in_group={GROUP_SIZE}", "response_length=8",
             "task.eval_size=16", "learner.eval_every=10", "learner.total_steps=1000000", "off_policy.max_staleness=1",
             "learner.lease_timeout_s=10", "learner.heartbeat_timeout_s=60", "learner.weight_sync.timeout_s=20",
             "learner.checkpoint.every=10", "actor.prompts_per_lease=2", "telemetry.log_every_s=0.5",
             "telemetry.dashboard_port=null", "telemetry.prometheus_port=0"]
SWARMS = {  # actor ids of one swarm process -> simulated cost (engines/simulated.py): step_s * longest response
    "fast0": {"length_median": 5.0, "length_sigma": 0.4, "step_s": 0.04},
    "slow0,slow1": {"length_median": 8.0, "length_sigma": 0.0, "step_s": 0.8},
    "late0": {"length_median": 8.0, "length_sigma": 0.0, "step_s": 1.6},
}
ACTOR_IDS = [aid for ids in SWARMS for aid in ids.split(",")]


@dataclass
class ForcedDropRun:
    run_dir: Path
    acks: Counter = field(default_factory=Counter)  # final acknowledgement status -> groups
    acks_by_actor: dict[str, Counter] = field(default_factory=dict)
    scrape: str = ""  # the learner's Prometheus text, scraped while it trained
    learner_log: str = ""


def run_forced_drops(tmp: Path, model_dir: Path) -> ForcedDropRun:
    """Run the learner with the four actors until it has dropped enough, stop it, and return the run and its
    acknowledgement records."""
    cluster = Cluster(tmp, model_dir, OVERRIDES)
    address = f"127.0.0.1:{cluster.port}"
    learner = cluster.learner()
    ack_logs = {ids: tmp / f"acks-{ids.split(',')[0]}.log" for ids in SWARMS}
    swarms = [subprocess.Popen([sys.executable, "-m", "gspo_async.actor.swarm", "--learner", address, "--ids", ids,
                                "--simulated", json.dumps(sim), "--ack-log", str(ack_logs[ids])],
                               cwd=ROOT, env=cluster.env, stdout=open(tmp / f"swarm-{ids.split(',')[0]}.out", "wb"),
                               stderr=subprocess.STDOUT) for ids, sim in SWARMS.items()]
    cluster.procs.extend(swarms)
    scrape = ""
    try:
        url = wait_for(lambda: (m := re.search(r"prometheus metrics: (http://\S+/metrics)", cluster.log("learner")))
                       and m.group(1), 300, "the learner's Prometheus address", (learner,))
        # Scrape once groups have been trained, while the learner runs (the port closes with the process).
        wait_for(lambda: cluster.trained_steps() >= 5, 300, "5 trained steps", (learner,))
        scrape = wait_for(lambda: _scrape(url), 60, "a Prometheus scrape with trained groups", (learner,))
        wait_for(lambda: (s := _status(address)) is not None and s.counters["dropped_stale"] >= MIN_STALE
                 and s.counters["leases_expired"] >= MIN_EXPIRED and cluster.trained_steps() >= MIN_STEPS, 600,
                 f"{MIN_STALE} stale drops, {MIN_EXPIRED} lease expiries and {MIN_STEPS} steps", (learner,))
        learner.send_signal(signal.SIGTERM)  # a clean stop: final checkpoint, ledger lines, final record, summary
        assert learner.wait(timeout=300) == 0, cluster.dump_logs()
    finally:
        cluster.stop_all()
    out = ForcedDropRun(cluster.run_dir, scrape=scrape, learner_log=cluster.log("learner"))
    for path in ack_logs.values():
        for line in path.read_text().splitlines() if path.is_file() else []:
            if line.strip():
                aid, _, status = line.split()
                out.acks_by_actor.setdefault(aid, Counter())[status] += 1
                out.acks[status] += 1
    return out


def _status(address: str):
    try:
        return query_status(address, timeout_s=5)
    except LearnerUnavailable:
        return None


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return ""
    return text if re.search(r'^gspo_staleness_bucket\{le="0"\} [1-9]', text, re.M) else ""
