"""Well-formed hostile messages against a real, training learner process.

Hypothesis draws messages from the message declarations (tests/protocol/strategies.py: valid shapes, adversarial
values, reused ids). Each drawn message is sent REPLAYS times, in shuffled order, over several connections
(out-of-order sequences: groups before registration, goodbyes in the middle), GSPO_FUZZ_MESSAGES in all (10,000
by default, 100,000 for a soak). After every batch a legitimate actor on its own connection must be served: it
leases prompts and each of its groups is accepted. At the end the learner process is still the one started
(restarts: 0, counted from the run's ledger), every refusal is counted by code, and its figures go to
test-artifacts/reliability.json (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from gspo_async.protocol.client import LearnerUnavailable
from gspo_async.protocol.codec import encode
from gspo_async.protocol.messages import (
    ERROR_CODES, TO_LEARNER, Ack, ErrorReply, Heartbeat, HeartbeatAck, Limits, ProtocolError, Register, Welcome)
from gspo_async.protocol.status import query_status
from tests.integration.conftest import wait_for
from tests.protocol.strategies import message
from tests.reliability.hostile import HostilePeer
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor

pytestmark = pytest.mark.slow

MESSAGES = int(os.environ.get("GSPO_FUZZ_MESSAGES", "10000"))
BATCH = 1000
REPLAYS = 10  # each drawn message is sent this often (replays; drawing costs most of the test's time)
CONNECTIONS = 4
BARRIER_RID = 2**31 - 1  # RID_MAX: drawn messages never carry it (draw_messages), so its replies are told apart
RUN = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
       "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=10",
       "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
       "learner.total_steps=1000000"]


def draw_messages(limits: Limits, n: int, seed: int) -> list[list[bytes]]:
    """`n` encoded messages drawn by hypothesis from the declarations of the actor -> learner messages."""
    out: list[list[bytes]] = []
    anything = st.one_of([message(cls, limits) for cls in TO_LEARNER.values()])

    @hypothesis_seed(seed)  # a reproducible draw: the seed is recorded with the figures
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(anything)
    def collect(msg):
        # The strategies draw the bounds of every range, RID_MAX (the barrier's rid) among them: a drawn message
        # answered under the barrier's rid would end a barrier before the learner read the batch.
        if getattr(msg, "rid", None) == BARRIER_RID:
            msg.rid = BARRIER_RID - 1
        out.append([bytes(f) for f in encode(msg)])

    collect()
    return out[:n]


def served(legit: HostilePeer, limits: Limits) -> int:
    """The legitimate actor leases prompts and delivers a group for each; every group must be accepted (resent
    after retry_later, as actors do). Returns the groups accepted. It registers again first (same instance: the
    same id), as an actor does after `not_registered`: it was silent while the batch was sent."""
    legit.send(Register("legit", "legit-instance", "raw", rid=legit.rid()))
    welcome = legit.wait_reply(lambda r: isinstance(r, Welcome), 60, "the legitimate actor's welcome")
    legit.sender = welcome.actor_id
    prompts, version = legit.lease(1, timeout_s=120)
    for prompt in prompts:
        group = canned_group(prompt, limits.group_size, version, legit.sender, vocab_size=limits.vocab_size,
                             length=2)
        answer = legit.ask(group, timeout_s=60)
        while isinstance(answer, Ack) and answer.status == "retry_later":
            answer = legit.ask(group, timeout_s=60)
        assert isinstance(answer, Ack) and answer.status == "accepted", answer
    return len(prompts)


def barrier(peer: RawActor, replies: list, timeout_s: float = 120.0) -> None:
    """Read replies until the learner answered a heartbeat sent after everything else on this connection."""
    peer.send(Heartbeat(0, {}, 0, rid=BARRIER_RID))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = peer.poll(1.0)
        if reply is None:
            continue
        if isinstance(reply, (HeartbeatAck, ErrorReply)) and reply.rid == BARRIER_RID:
            return
        replies.append(reply)
    raise AssertionError(f"the learner did not answer the barrier within {timeout_s} s")


def test_wellformed_fuzz_never_stops_the_learner_and_a_legitimate_actor_is_served(cluster_factory, rng, record):
    c = cluster_factory(RUN)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    legit = HostilePeer(address)
    peers: list[RawActor] = []
    try:
        wait_for(lambda: _status(address), 180, "the learner to answer", (learner,))
        welcome = legit.register("legit")
        legit.sender, limits = welcome.actor_id, welcome.limits
        pid = learner.pid

        t0 = time.monotonic()
        seed = rng.randrange(2**31)
        pool = draw_messages(limits, max(1, MESSAGES // REPLAYS), seed)
        draw_s = time.monotonic() - t0
        schedule = pool * REPLAYS
        rng.shuffle(schedule)
        schedule = schedule[:MESSAGES]

        peers = [RawActor(address) for _ in range(CONNECTIONS)]
        replies: list = []
        sent, served_groups, batches = 0, 0, 0
        t_attack = time.monotonic()
        for start in range(0, len(schedule), BATCH):
            for frames in schedule[start:start + BATCH]:
                peer = peers[sent % CONNECTIONS]
                peer.send_frames(frames)
                sent += 1
                while (reply := peer.poll()) is not None:  # read as we go: no reply queue fills up
                    replies.append(reply)
            for peer in peers:
                barrier(peer, replies)
            assert learner.poll() is None, c.dump_logs()
            served_groups += served(legit, limits)  # after every batch, an honest actor gets its work done
            batches += 1
        attack_s = time.monotonic() - t_attack

        end = wait_for(lambda: _status(address), 60, "a status reply (the fuzz may have used the rate limit)",
                       (learner,))
        assert learner.poll() is None and learner.pid == pid, c.dump_logs()
    finally:
        for peer in peers:
            peer.close()
        legit.close()
        c.stop_all()

    codes = Counter(r.code for r in replies if isinstance(r, ErrorReply))
    acks = Counter(r.status for r in replies if isinstance(r, Ack))
    assert "internal" not in codes, codes  # no drawn message reached a bug
    assert end.counters.get("internal_errors", 0) == 0 and end.counters.get("timer_errors", 0) == 0, end.counters
    assert set(codes) <= set(ERROR_CODES) and len(codes) >= 3, codes  # refusals with documented codes, of kinds
    assert len(replies) >= sent // 4, (len(replies), sent)  # the learner kept answering (goodbyes get no reply)
    # every fuzz message reached the learner
    assert end.counters["messages_received"] >= sent, (
        f"sent {sent}; learner counters {dict(end.counters)}; learner log:\n"
        + "\n".join(line for line in c.log("learner").splitlines() if "gate" in line or "connection" in line))
    restarts = learner_restarts(c.run_dir)  # from the run's ledger: one start line per learner process
    assert restarts == 0, restarts
    record({"fuzz_messages_sent": sent, "fuzz_distinct_drawn": len(pool), "fuzz_batches": batches,
            "fuzz_replies": len(replies), "fuzz_refused": sum(codes.values()),
            "fuzz_refused_by_code": dict(sorted(codes.items())), "fuzz_acks": dict(acks),
            "fuzz_other_replies": len(replies) - sum(codes.values()) - sum(acks.values()),
            "learner_messages_received": end.counters["messages_received"],
            "learner_replies_failed": end.counters["replies_failed"], "legit_groups_accepted": served_groups,
            "learner_restarts": restarts, "learner_alive": True,
            "hypothesis_seed": seed, "draw_s": round(draw_s, 1), "attack_s": round(attack_s, 1),
            "learner_version_at_end": end.version})


def learner_restarts(run_dir) -> int:
    """Learner processes started in `run_dir` after the first, counted from the run's ledger (ledger.py)."""
    from gspo_async.learner.ledger import replay

    return replay(run_dir).starts - 1


def _status(address: str):
    try:
        return query_status(address, timeout_s=2)
    except (LearnerUnavailable, ProtocolError):  # not answering yet (starting), or rate_limited
        return None
