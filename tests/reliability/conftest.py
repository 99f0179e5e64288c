"""The reliability suite: faults injected into real learner and actor processes on loopback.

Every test is short by default so CI runs it; set GSPO_SOAK_S to run each fault loop for that many seconds instead
(a soak by hand), and GSPO_RELIABILITY_SEED to replay a run's random fault schedule. Each test adds its figures
(faults injected, groups lost, bad inputs rejected), as observed, to test-artifacts/reliability.json;
`python tools/reliability_figures.py` renders them into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from gspo_async.protocol.status import query_status
from gspo_async.learner.ledger import Ledger, ledger_summary, replay
from gspo_async.protocol.client import LearnerUnavailable
from gspo_async.protocol.messages import StatusReply
from tests.integration.conftest import cluster_factory  # noqa: F401  (real learner and actor processes)

SOAK_S = float(os.environ.get("GSPO_SOAK_S", "0") or 0)
SEED = int(os.environ.get("GSPO_RELIABILITY_SEED", "0") or 0) or int(time.time()) % 100_000


def duration(default_s: float) -> float:
    """How long a fault loop runs: `default_s` in CI, GSPO_SOAK_S when soaking."""
    return SOAK_S if SOAK_S > 0 else default_s


@pytest.fixture
def rng(request) -> random.Random:
    """The fault schedule's randomness; the seed is printed so a failing schedule can be replayed."""
    seed = SEED + sum(map(ord, request.node.name))
    print(f"[reliability] {request.node.name}: GSPO_RELIABILITY_SEED={SEED} (schedule seed {seed})")
    return random.Random(seed)


@pytest.fixture
def record(artifact_dir, request):
    """record(figures): add this test's figures to test-artifacts/reliability.json (merged across tests)."""
    path = artifact_dir / "reliability.json"

    def write(figures: dict[str, Any]) -> None:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[request.node.name] = {**figures, "seed": SEED, "soak_s": SOAK_S,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))

    return write


def status(address: str, timeout_s: float = 2.0) -> StatusReply | None:
    """The learner's live status (`gspo-async status`), or None while it does not answer (starting, frozen)."""
    try:
        return query_status(address, timeout_s=timeout_s)
    except LearnerUnavailable:
        return None


def version(address: str) -> int:
    """The learner's weight version now, -1 while it does not answer."""
    s = status(address)
    return s.version if s is not None else -1


def check_ledger(run_dir: Path) -> tuple[Ledger, dict[str, Any]]:
    """Replay a run's ledger and assert its invariants: no prompt ended twice, no group trained twice, every drop
    has a reason. Returns the ledger and its summary figures."""
    ledger = replay(run_dir)
    summary = ledger_summary(ledger)
    assert ledger.starts >= 1, f"no ledger in {run_dir}"
    assert not ledger.repeated, f"prompts ended twice in one lineage: {ledger.repeated[:5]}"
    assert summary["groups_trained_twice"] == 0, summary
    assert all(r.get("reason") for r in ledger.dropped.values())
    return ledger, summary


def check_against_final_checkpoint(run_dir: Path, ledger: Ledger) -> dict[str, Any]:
    """The ledger and the final checkpoint's coordinator state, two independent records, must agree: every issued
    prompt is trained (ledger), dropped with the same reason (both), or still open (state); none is two of these."""
    from gspo_async.learner.checkpoint import load_latest

    ckpt = load_latest(run_dir / "checkpoints")
    assert ckpt is not None, f"no loadable checkpoint under {run_dir / 'checkpoints'}"
    state = ckpt.state["coordinator"]
    open_ids = {int(p["prompt_id"]) for p in state["open"]}
    dropped = {int(k): v for k, v in state["dropped"].items()}
    issued = set(range(int(state["n"]["prompts_issued"])))
    trained = set(ledger.trained)
    assert {pid: r["reason"] for pid, r in ledger.dropped.items()} == dropped
    assert not trained & open_ids and not trained & set(dropped) and not open_ids & set(dropped)
    assert trained | open_ids | set(dropped) == issued, "prompts neither trained, dropped nor open"
    assert len(trained) == int(state["n"].get("prompts_trained", 0))
    return {"prompts_issued": len(issued), "prompts_open_at_end": len(open_ids), "final_step": ckpt.step,
            "accepted_groups_unaccounted": accepted_groups_unaccounted(ledger, state)}


def accepted_groups_unaccounted(ledger: Ledger, state: dict[str, Any]) -> int | None:
    """Groups the learner acknowledged as accepted (its count in the final state) that the ledger shows neither
    trained nor dropped, and that the final state does not hold buffered: computed, so that a lost group shows as a
    number in the figures (callers assert it is 0 after recording it). None for a resumed run, where a group
    buffered at a checkpoint is re-issued and accepted again, so the count and the ledger differ by design."""
    if ledger.starts != 1:
        return None
    ended_with_group = len(ledger.trained) + sum(1 for r in ledger.dropped.values() if r.get("group_id"))
    held = sum(1 for p in state["open"] if p["state"] in ("buffered", "training"))
    return int(state["n"].get("groups_accepted", 0)) - ended_with_group - held
