"""The actor's loop when its learner restarts and goes away again: it says so and keeps running, it never spins."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from gspo_async.actor.main import Actor
from gspo_async.config import load_config
from gspo_async.weights import elastic
from tests.integration.conftest import ROOT
from tests.support.ports import free_port


def _welcome_of_a_gone_learner(session: str) -> SimpleNamespace:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["learner.weight_sync.timeout_s=1"]).to_dict()
    # nobody listens on this port: the learner that sent this welcome stopped again
    return SimpleNamespace(config=cfg, model_files={}, weight_store=("127.0.0.1", free_port()), session=session)


def test_a_restarted_learner_whose_weight_store_is_gone_leaves_the_actor_running(monkeypatch, capsys):
    monkeypatch.setattr(elastic, "CONNECT_S", 1.0)
    actor = Actor(f"127.0.0.1:{free_port()}", "a0", [], None, None)
    try:
        old_engine = object()
        actor.engine, actor.session = old_engine, "first"
        actor.client.welcome = _welcome_of_a_gone_learner("second")
        assert actor._reconfigure() is False
        out = capsys.readouterr().out
        assert "learner restarted; re-configuring" in out
        assert "could not set up with the restarted learner" in out and "did not answer" in out
        # nothing of the half-done setup is kept: no receiver, the old session (so the loop tries again)
        assert actor.weights is None and actor.session == "first" and actor.engine is old_engine
    finally:
        actor.engine = None
        actor.close()


def test_waiting_for_weights_without_a_receiver_blocks_until_stopped_instead_of_spinning():
    actor = Actor(f"127.0.0.1:{free_port()}", "a0", [], None, None)
    try:
        # a receiver that ended (the learner went away): it has no versions to wait for, so asking it would fail
        actor.weights = SimpleNamespace(error=ConnectionError("the learner closed the weight store"))
        threading.Timer(0.3, actor.stop.event.set).start()
        start = time.monotonic()
        actor._wait_for_weights(120.0)
        # it returned because of the stop (not at once, which would make the loop spin), long before the wait's end
        assert actor.stop.is_set()
        assert time.monotonic() - start < 60.0
    finally:
        actor.weights = None
        actor.close()
