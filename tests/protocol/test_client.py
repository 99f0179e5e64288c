"""The actor client against a scripted learner: acks, resends, rejections, re-registration, leases, versions."""

import threading

import numpy as np
import pytest

from gspo_async.protocol.codec import normalize_group
from gspo_async.protocol.messages import (
    Ack, ErrorReply, Goodbye, HeartbeatAck, Lease, LeaseRequest, PromptLease, ProtocolError, Register,
    RolloutGroup, WeightVersion)
from gspo_async.protocol.client import ActorClient, LearnerUnavailable, RegistrationRefused
from tests.support.actor_process import wait_until
from tests.support.canned import canned_group
from tests.support.fake_learner import RawLearner

LEASE = PromptLease(7, np.array([1, 2, 3], np.int32), "6", {})


@pytest.fixture
def learner():
    raw = RawLearner()
    yield raw
    raw.close()


def connected(learner, **kwargs):
    """A client registered with the scripted learner (registration runs on a side thread)."""
    client = ActorClient(learner.address, "a0", engine="fake", **kwargs)
    done = {}
    t = threading.Thread(target=lambda: done.update(w=client.connect(5)))
    t.start()
    routing, reg = learner.accept_register()
    t.join(5)
    assert done["w"].session == learner.session and client.actor_id == "a0"
    return client, routing, reg


def test_connect_to_nothing_times_out_with_a_clear_error():
    client = ActorClient("127.0.0.1:1", "a0")
    with pytest.raises(LearnerUnavailable, match="no answer from a learner at 127.0.0.1:1"):
        client.connect(timeout_s=0.3)


def test_refused_registration_raises(learner):
    client = ActorClient(learner.address, "a0")
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RegistrationRefused, client.connect, 5)))
    t.start()
    routing, reg = learner.recv(types=(Register,))
    assert reg.actor_id == "a0" and reg.instance == client.instance
    learner.send(routing, ErrorReply("schema_version", "speak version 9", rid=reg.rid))
    t.join(5)
    assert "schema_version: speak version 9" in str(errors[0].value)


def test_group_is_resent_after_an_ack_timeout_until_acked(learner):
    client, routing, _ = connected(learner, ack_timeout_s=0.3)
    group = canned_group(LEASE, 2, 0, "a0")
    client.push(group)
    _, first = learner.recv(types=(RolloutGroup,))
    _, second = learner.recv(types=(RolloutGroup,))  # no ack: the client sends it again
    assert first == second == normalize_group(group, actor_id=client.actor_id)
    assert client.unacked() == 1
    learner.send(routing, Ack(group.group_id, "accepted"))
    assert client.wait_acked(5) and client.unacked() == 0
    assert client.counters["ack_timeouts"] >= 1 and client.counters["resent"] >= 1
    client.close()


def test_retry_later_and_final_rejection(learner):
    acks = []
    client, routing, _ = connected(learner, on_ack=lambda gid, status: acks.append((gid, status)))
    a = canned_group(LEASE, 2, 0, "a0")
    b = canned_group(PromptLease(8, np.array([4], np.int32), "", {}), 2, 0, "a0")
    client.push(a)
    client.push(b)
    _, got_a = learner.recv(types=(RolloutGroup,))
    _, got_b = learner.recv(types=(RolloutGroup,))
    assert (got_a.group_id, got_b.group_id) == (a.group_id, b.group_id)
    learner.send(routing, Ack(a.group_id, "retry_later", retry_after_s=0.05))
    learner.send(routing, ErrorReply("bad_logprob", "positive", ref=b.group_id))
    _, again = learner.recv(types=(RolloutGroup,))  # a comes back after retry_after_s, b never does
    assert again.group_id == a.group_id
    learner.send(routing, Ack(a.group_id, "duplicate"))
    assert client.wait_acked(5)
    assert list(client.rejected) == [(b.group_id, "bad_logprob", "positive")]
    assert client.counters["ack_retry_later"] == 1 and client.counters["ack_duplicate"] == 1
    assert acks == [(a.group_id, "duplicate")]  # final acks only; a rejection is not an ack
    client.close()


def test_not_registered_makes_the_client_register_again_and_resend(learner):
    client, routing, first = connected(learner)
    group = canned_group(LEASE, 2, 0, "a0")
    client.push(group)
    learner.recv(types=(RolloutGroup,))
    learner.send(routing, ErrorReply("not_registered", "who are you", ref=group.group_id))
    routing2, again = learner.accept_register()
    assert again.instance == first.instance and again.actor_id == "a0"
    _, resent = learner.recv(types=(RolloutGroup,))
    assert resent.group_id == group.group_id
    learner.send(routing2, Ack(group.group_id, "accepted"))
    assert client.wait_acked(5) and client.counters["registrations"] == 2
    client.close()


def test_a_learner_resumed_at_an_older_version_gets_back_the_prompts_of_groups_made_by_lost_weights(learner):
    learner.version = 5
    client, routing, _ = connected(learner)
    old = canned_group(LEASE, 2, 4, "a0")  # made by weights 4: still in the resumed lineage
    new = canned_group(PromptLease(8, np.array([4], np.int32), "", {}), 2, 5, "a0")  # weights 5: lost in the crash
    client.push(old)
    client.push(new)
    assert {learner.recv(types=(RolloutGroup,))[1].group_id for _ in range(2)} == {old.group_id, new.group_id}
    learner.session, learner.version = "session-2", 4  # crashed before the checkpoint of version 5; resumed at 4
    learner.accept_register()
    seen = {}
    while "group" not in seen or "returned" not in seen:
        _, msg = learner.recv(types=(RolloutGroup, LeaseRequest))
        seen["group" if isinstance(msg, RolloutGroup) else "returned"] = msg
    assert seen["group"].group_id == old.group_id  # resent
    assert seen["returned"].returned == [8] and seen["returned"].n == 0  # re-issued at once, not after a timeout
    assert client.unacked() == 1 and client.counters["rolled_back"] == 1
    assert list(client.rejected)[-1][:2] == (new.group_id, "rolled_back")
    client.close()


def test_a_new_learner_session_triggers_registration_and_resend(learner):
    client, routing, _ = connected(learner)
    group = canned_group(LEASE, 2, 0, "a0")
    client.push(group)
    learner.recv(types=(RolloutGroup,))
    learner.session = "session-2"  # the learner restarted: heartbeat answers carry the new session
    learner.accept_register()
    learner.recv(types=(RolloutGroup,))
    assert client.learner_session == "session-2" and client.counters["learner_restarts"] == 1
    assert client.welcome.session == "session-2"
    client.close()


def test_silent_learner_makes_the_client_reconnect_on_a_fresh_socket(learner):
    client, routing, _ = connected(learner, learner_timeout_s=0.5)
    learner.answer_heartbeats = False
    routing2, _ = learner.accept_register(timeout=5)
    assert routing2 != routing and client.counters["reconnects"] >= 1
    client.close()


def test_versions_and_heartbeat_contents(learner):
    seen = []
    stats = {"tokens_per_s": np.float32(2.5), "bad key": 1, "arr": [1]}
    client, routing, _ = connected(learner, on_version=seen.append, stats_fn=lambda: stats)
    learner.send(routing, WeightVersion(3, learner.session))
    wait_until(lambda: client.version == 3, what="version 3 announced")
    assert seen == [3]
    client.applied_version = 2
    beat = learner.next_heartbeat(lambda h: h.version == 2)
    assert beat.stats == {"tokens_per_s": 2.5}  # numpy scalars converted; bad keys and non-scalars left out
    client.close()


def test_lease_and_late_lease_answers(learner):
    client, routing, _ = connected(learner)
    result = {}
    t = threading.Thread(target=lambda: result.update(first=client.lease(2, timeout_s=5)))
    t.start()
    _, req = learner.recv(types=(LeaseRequest,))
    assert req.n == 2 and req.wait_s == 0.0
    learner.send(routing, Lease([LEASE], 30.0, 0, "", req.rid))
    t.join(5)
    assert [p.prompt_id for p in result["first"]] == [7] and client.last_lease_reason == ""
    # an answer that comes after lease() gave up is not lost: the next call returns it
    assert client.lease(1, timeout_s=0.05) == [] and client.last_lease_reason == "timeout"
    _, late = learner.recv(types=(LeaseRequest,))
    learner.send(routing, Lease([PromptLease(9, np.array([5], np.int32), "", {})], 30.0, 0, "", late.rid))
    wait_until(lambda: client._spare, what="the late lease to arrive")
    assert [p.prompt_id for p in client.lease(1, timeout_s=1)] == [9]
    client.close()


def test_a_stop_ends_a_lease_wait_that_no_learner_answers(learner):
    """A stopping actor must not wait out a 60 s lease timeout when the learner went away: `stop` ends the wait."""
    client, routing, _ = connected(learner)
    stop = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(leases=client.lease(2, timeout_s=60, stop=stop)))
    t.start()
    learner.recv(types=(LeaseRequest,))  # asked, and never answered
    assert t.is_alive()
    stop.set()
    t.join(10)
    assert not t.is_alive(), "lease() ignored the stop"
    assert result["leases"] == [] and client.last_lease_reason == "timeout"
    client.close()


def test_push_checks_the_group_locally(learner):
    client, routing, _ = connected(learner)
    bad = canned_group(LEASE, 2, 0, "a0")
    bad.responses[0].logprobs[0] = 0.5
    with pytest.raises(ProtocolError, match="bad_logprob"):
        client.push(bad)
    with pytest.raises(ProtocolError, match="group_size"):
        client.push(canned_group(LEASE, 3, 0, "a0"))
    good = canned_group(LEASE, 2, 0, "a0")
    client.push(good)
    with pytest.raises(ValueError, match="pushed twice"):
        client.push(good)
    client.close()


def test_close_says_goodbye_with_returned_leases(learner):
    client, routing, _ = connected(learner)
    client.close(return_leases=[7, 8])
    _, bye = learner.recv(types=(Goodbye,))
    assert bye.return_leases == [7, 8]
    with pytest.raises(RuntimeError, match="closed"):
        client.push(canned_group(LEASE, 2, 0, "a0"))


def test_heartbeat_ack_updates_the_version(learner):
    client, routing, _ = connected(learner)
    learner.send(routing, HeartbeatAck(5, learner.session))
    wait_until(lambda: client.version == 5, what="version from a heartbeat answer")
    client.close()


def test_a_learner_of_another_run_makes_the_client_drop_the_old_runs_groups(learner):
    client = ActorClient(learner.address, "a0", engine="fake")
    done = {}
    t = threading.Thread(target=lambda: done.update(w=client.connect(5)))
    t.start()
    learner.accept_register(run_id="run-A")
    t.join(5)
    assert client.run_id == "run-A"
    group = canned_group(LEASE, 2, 0, "a0")
    client.push(group)
    _, sent = learner.recv(types=(RolloutGroup,))
    assert sent.run_id == "run-A"  # every group names the run it was made for
    learner.session = "session-2"  # a new learner, of a new run, on the same address
    learner.accept_register(run_id="run-B")
    assert client.wait_acked(5)  # nothing left pending: the old run's group was dropped, not resent
    assert client.counters["other_run"] == 1 and client.run_id == "run-B"
    assert list(client.rejected)[-1][:2] == (group.group_id, "other_run")
    client.close()
