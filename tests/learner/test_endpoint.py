"""The learner endpoint over real sockets: welcome, rejections by reason, dedup, flow control, and a fuzz run."""

import random
import threading

import msgpack
import numpy as np
import pytest

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.codec import encode
from gspo_async.protocol.messages import (
    Ack, ErrorReply, Goodbye, Heartbeat, HeartbeatAck, Lease, LeaseRequest, Limits, WeightVersion)
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.protocol.client import ActorClient
from tests.support.actor_process import wait_until
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2,
                max_message_bytes=1 << 20)


def make_server(**kw):
    coord_args = dict(groups_per_step=4, group_size=2, max_staleness=1, lease_timeout_s=30.0, heartbeat_timeout_s=5.0)
    coord_args.update(kw)
    items = [(i, [1 + i % 9, 2, 3], str(i), {"i": i}) for i in range(20000)]
    server = LearnerServer(Coordinator(PromptSource(items), **coord_args), limits=LIMITS, heartbeat_interval_s=0.5,
                           welcome_extra={"config": {"rollout_batch_size": 4}, "model_files": {"tok.json": b"\x00ab"},
                                          "weight_store": ["127.0.0.1", 7777]})
    server.start()
    return server


@pytest.fixture
def server():
    s = make_server()
    yield s
    s.close()


@pytest.fixture
def peer(server):
    p = RawActor(f"127.0.0.1:{server.port}")
    yield p
    p.close()


def lease(peer, n):
    peer.send(LeaseRequest(n, rid=5))
    reply = peer.recv()
    assert isinstance(reply, Lease) and reply.rid == 5
    return reply.prompts


def test_welcome_carries_what_a_remote_actor_needs(server, peer):
    w = peer.register("raw")
    assert (w.actor_id, w.session, w.version) == ("raw", server.session, 0)
    assert w.config == {"rollout_batch_size": 4} and w.model_files == {"tok.json": b"\x00ab"}
    assert w.weight_store == ("127.0.0.1", 7777) and w.limits == LIMITS
    assert w.heartbeat_interval_s == 0.5 and w.lease_timeout_s == 30.0 and w.rid == 1


def test_unregistered_senders_are_told_to_register(server, peer):
    leased_group = canned_group(__import__("gspo_async.protocol.messages", fromlist=["PromptLease"]).PromptLease(
        0, np.array([1, 2, 3], np.int32), "", {}), 2, 0, "raw", vocab_size=64)
    peer.send(leased_group)
    err = peer.recv()
    assert isinstance(err, ErrorReply) and err.code == "not_registered" and err.ref == leased_group.group_id
    peer.send(LeaseRequest(1, rid=9))
    err = peer.recv()
    assert err.code == "not_registered" and err.rid == 9
    assert server.counters()["rejected_by_reason"] == {"not_registered": 2}


def test_bad_groups_are_rejected_by_reason_and_the_learner_keeps_serving(server, peer):
    peer.register("raw")
    prompts = lease(peer, 8)

    def group(i, **change):
        g = canned_group(prompts[i], 2, 0, "raw", vocab_size=64)
        for key, value in change.items():
            setattr(g.responses[0], key, value)
        return g

    def expect(g, code):
        peer.send(g)
        reply = peer.recv()
        assert isinstance(reply, ErrorReply) and reply.code == code and reply.ref == g.group_id, reply

    n = len(prompts[0].tokens)
    expect(group(0, logprobs=np.full(3, -1.0, np.float32)), "length_mismatch")
    expect(group(0, logprobs=np.full(4, np.nan, np.float32)), "bad_logprob")
    expect(group(0, logprobs=np.full(4, 0.25, np.float32)), "bad_logprob")
    expect(group(0, tokens=np.array([1, 2, 64, 3], np.int32)), "out_of_vocab")
    expect(group(0, version_spans=np.array([[1, 0, 4]], np.int32)), "forged_version")
    expect(group(0, version_spans=np.array([[0, 0, 3]], np.int32)), "bad_spans")
    bad_prompt = group(1)
    bad_prompt.prompt_tokens = np.array([9] * n, np.int32)
    expect(bad_prompt, "prompt_mismatch")
    unknown = group(2)
    unknown.prompt_id = 10**9
    expect(unknown, "unknown_prompt")
    ok = group(0)
    peer.send(ok)
    assert peer.recv() == Ack(ok.group_id, "accepted")
    peer.send(ok)  # the same group again (a resend)
    assert peer.recv() == Ack(ok.group_id, "duplicate")
    peer.send(group(0))  # another group for an already accepted prompt
    assert peer.recv().status == "duplicate"
    c = server.counters()
    assert c["groups_rejected_by_reason"] == {"length_mismatch": 1, "bad_logprob": 2, "out_of_vocab": 1,
                                              "forged_version": 1, "bad_spans": 1, "prompt_mismatch": 1,
                                              "unknown_prompt": 1}
    assert c["groups_accepted"] == 1 and c["groups_duplicate"] == 2 and c["internal_errors"] == 0
    assert [g.group_id for g in server.take_groups(1, timeout_s=1)] == [ok.group_id]


def test_buffer_full_answers_retry_later():
    server = make_server(groups_per_step=2, max_staleness=3, max_buffered_groups=2)
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("raw")
        prompts = lease(peer, 3)
        for i, status in enumerate(["accepted", "accepted", "retry_later"]):
            peer.send(canned_group(prompts[i], 2, 0, "raw", vocab_size=64))
            reply = peer.recv()
            assert reply.status == status and reply.retry_after_s == (1.0 if status == "retry_later" else 0.0)
        assert len(server.take_groups(2, timeout_s=1)) == 2
        peer.send(canned_group(prompts[2], 2, 0, "raw", vocab_size=64))
        assert peer.recv().status == "accepted"
    finally:
        peer.close()
        server.close()


def test_held_lease_request_is_answered_when_admission_opens(server, peer):
    peer.register("raw")
    assert len(lease(peer, 100)) == 8  # (1 + 0 + 1) * 4
    peer.send(LeaseRequest(2, wait_s=30.0, rid=11))
    assert peer.poll(0.2) is None  # held: admission is closed
    server.set_version(1)
    replies = [peer.recv(), peer.recv()]
    lease_reply = next(r for r in replies if isinstance(r, Lease))
    assert next(r for r in replies if isinstance(r, WeightVersion)) == WeightVersion(1, server.session)
    assert lease_reply.rid == 11 and len(lease_reply.prompts) == 2 and lease_reply.version == 1
    # a held request that times out is answered with an empty lease
    peer.send(LeaseRequest(3, rid=12))
    assert len(peer.recv().prompts) == 2
    peer.send(LeaseRequest(1, wait_s=0.2, rid=13))
    reply = peer.recv(timeout=5)
    assert (reply.rid, reply.prompts, reply.reason) == (13, [], "admission")
    # a new request replaces a held one; the held one still gets its answer
    peer.send(LeaseRequest(1, wait_s=30, rid=14))
    peer.send(LeaseRequest(1, wait_s=0, rid=15))
    assert [(r.rid, r.reason) for r in (peer.recv(), peer.recv())] == [(14, "admission"), (15, "admission")]


def test_heartbeat_goodbye_and_returned_leases(server, peer):
    peer.register("raw")
    prompts = lease(peer, 4)
    peer.send(Heartbeat(0, {"tokens_per_s": 7.5}, 1, rid=3))
    assert peer.recv() == HeartbeatAck(0, server.session, 3)
    (a,) = server.actors()
    assert a["tokens_per_s"] == 7.5 and a["leases"] == 4 and a["info"]["address"] == "127.0.0.1"
    peer.send(LeaseRequest(0, returned=[prompts[0].prompt_id], rid=4))
    assert peer.recv().prompts == []
    peer.send(Goodbye("done", []))
    wait_until(lambda: server.counters()["actors_alive"] == 0, what="goodbye handled")
    c = server.counters()
    assert c["leases_returned"] == 4 and c["pending_reissue"] == 4 and server.accounting()["balanced"]


def test_take_groups_waits_for_groups(server, peer):
    peer.register("raw")
    prompts = lease(peer, 2)
    assert server.take_groups(1, timeout_s=0.05) == []
    result = {}
    t = threading.Thread(target=lambda: result.update(groups=server.take_groups(2, timeout_s=10)))
    t.start()
    for p in prompts:
        peer.send(canned_group(p, 2, 0, "raw", vocab_size=64))
        assert peer.recv().status == "accepted"
    t.join(10)
    assert sorted(g.prompt_id for g in result["groups"]) == [p.prompt_id for p in prompts]
    assert all(g.actor_id == "raw" for g in result["groups"])
    server.mark_trained(result["groups"])
    assert server.counters()["prompts_trained"] == 2


def test_lead_api_shapes(server):
    assert isinstance(server.port, int) and server.port > 0
    assert server.live_actor_ids() == [] and server.actors() == []
    assert server.state_dict()["format"] == 1
    with pytest.raises(ValueError, match="group_size"):
        LearnerServer(server.coordinator, limits=Limits(64, 16, 32, 3))
    with pytest.raises(ValueError, match="welcome_extra"):
        LearnerServer(server.coordinator, limits=LIMITS, welcome_extra={"configs": {}})
    busy = LearnerServer(server.coordinator, port=server.port, limits=LIMITS)
    with pytest.raises(OSError, match="cannot bind"):
        busy.start()


# --------------------------------------------------------------------------------------------------------------
# Fuzz: thousands of random and mutated messages
# --------------------------------------------------------------------------------------------------------------

WRONG_VALUES = [None, True, -1, 3, "x" * 300, "?", b"\x00" * 9, [1, 2], {"a": 1}, 1.5, float("nan")]


def wrong_type(rng, body):
    """Replace one field (at any depth) with a value of another type."""
    paths, stack = [], [((), body)]
    while stack:
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            paths.append((path + (k,), v))
            stack.append((path + (k,), v))
    path, old = rng.choice(paths)
    new = rng.choice([w for w in WRONG_VALUES if type(w) is not type(old)
                      and not (isinstance(old, float) and type(w) is int)])
    node = body
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
    return body


def huge_length(rng):
    """A header whose next item claims gigabytes it does not carry."""
    claim = rng.choice([b"\xc6\xff\xff\xff\xf0", b"\xdb\xff\xff\xff\xf0", b"\xdd\xff\xff\xff\xf0",
                        b"\xdf\xff\xff\xff\xf0"])  # bin32, str32, array32, map32
    return b"\x83\xa1v\x01\xa1t\xadrollout_group\xa8group_id" + claim + bytes(rng.randrange(256) for _ in range(8))


def test_fuzz_mutated_and_random_frames_never_break_the_server(server):
    rng = random.Random(1234)
    peer = RawActor(f"127.0.0.1:{server.port}")
    peer.register("fuzz")
    prompts = lease(peer, 8)
    bases = [encode(canned_group(p, 2, 0, "fuzz", vocab_size=64))[0] for p in prompts]
    bases += [encode(Heartbeat(0, {"x": 1.0}, 0, rid=2))[0], encode(LeaseRequest(1, rid=3))[0]]
    sent, must_fail, replies = 0, 0, []
    for i in range(5000):
        base = rng.choice(bases)
        kind = i % 6
        if kind == 0:  # bit flips
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            frames = [bytes(data)]
        elif kind == 1:  # truncation
            frames = [base[: rng.randrange(len(base))]]
        elif kind == 2:  # random bytes
            frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(64)))]
        elif kind == 3:  # wrong types
            frames = [msgpack.packb(wrong_type(rng, msgpack.unpackb(base, raw=False)), use_bin_type=True)]
        elif kind == 4:  # huge lengths
            frames = [huge_length(rng)]
        else:  # extra frames
            frames = [base] + [bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
                               for _ in range(rng.randint(1, 3))]
        must_fail += kind != 0
        peer.send_frames(frames)
        sent += 1
        while (reply := peer.poll()) is not None:  # read as we go so no reply queue fills up
            replies.append(reply)
    wait_until(lambda: server.counters()["messages_received"] >= sent + 2, timeout=30, what="all fuzz messages")
    while (reply := peer.poll(0.2)) is not None:
        replies.append(reply)
    c = server.counters()
    rejected = sum(c["rejected_by_reason"].values())
    assert c["messages_received"] == sent + 2  # + register + lease
    assert c["messages_ok"] + rejected == c["messages_received"]
    assert c["internal_errors"] == 0 and "internal" not in c["rejected_by_reason"]
    assert rejected >= must_fail
    assert sum(isinstance(r, ErrorReply) for r in replies) == rejected
    assert set(c["rejected_by_reason"]) <= {"malformed", "bad_field", "bad_frames", "schema_version", "unknown_type",
                                            "too_large", "length_mismatch", "out_of_vocab", "bad_logprob",
                                            "bad_number", "group_size", "bad_spans", "forged_version",
                                            "unknown_prompt", "prompt_mismatch"}
    assert c["replies_failed"] == 0 and server.accounting()["balanced"]
    peer.close()
    # valid traffic is still served
    client = ActorClient(f"127.0.0.1:{server.port}", "after-fuzz", engine="fake")
    client.connect(5)
    server.set_version(5)
    got = client.lease(1, timeout_s=5)
    client.push(canned_group(got[0], 2, 0, "after-fuzz", vocab_size=64))
    assert client.wait_acked(5) and client.counters["ack_accepted"] == 1
    client.close()


def test_allow_version_accepts_groups_made_with_weights_still_being_published(server, peer):
    peer.register("raw")
    first, second = lease(peer, 2)
    early = canned_group(first, 2, 1, "raw", vocab_size=64)
    peer.send(early)
    assert peer.recv().code == "forged_version"  # version 1 is not published yet
    server.allow_version(1)  # ... now it is on its way to the actors
    peer.send(canned_group(second, 2, 1, "raw", vocab_size=64))
    assert peer.recv().status == "accepted"
    assert server.counters()["version"] == 0  # admission and staleness still count from version 0


def test_oversized_messages_are_answered_too_large(server, peer):
    peer.register("raw")
    peer.send_frames([msgpack.packb({"v": 1, "t": "heartbeat", "version": 0}), b"x" * (LIMITS.max_message_bytes + 1)])
    reply = peer.recv()
    assert reply.code == "too_large" and server.counters()["rejected_by_reason"] == {"too_large": 1}
    peer.send(Heartbeat(0, {}, 0, rid=8))
    assert peer.recv().rid == 8


def test_welcome_carries_no_key_paths():
    server = LearnerServer(Coordinator(PromptSource([(0, [1], "x")]), groups_per_step=1, group_size=2,
                                       max_staleness=0, lease_timeout_s=30.0, heartbeat_timeout_s=5.0),
                           limits=LIMITS, welcome_extra={"config": {
                               "learner": {"host": "127.0.0.1", "curve": {"secret_key": "/keys/server.key_secret"}},
                               "actor": {"curve": {"secret_key": "/keys/client0.key_secret"}, "device": "cpu"}}})
    server.start()
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        welcome = peer.register("a0")
        assert welcome.config == {"learner": {"host": "127.0.0.1"}, "actor": {"device": "cpu"}}
        assert "key_secret" not in str(msgpack.unpackb(encode(welcome)[0], raw=False))
    finally:
        peer.close()
        server.close()


def test_status_is_paged_and_rate_limited(server, peer):
    from gspo_async.learner.guards import STATUS_BURST, STATUS_RATE_PER_S, TokenBucket
    from gspo_async.protocol.messages import STATUS_PAGE_MAX, StatusReply, StatusRequest

    with server._lock:  # 150 registered actors, more than one page
        for i in range(150):
            server.coordinator.register(f"x{i}", f"i{i}", "hf")
    peer.send(StatusRequest(rid=1, offset=0))
    first = peer.recv()
    peer.send(StatusRequest(rid=2, offset=STATUS_PAGE_MAX, limit=100))
    second = peer.recv()
    assert isinstance(first, StatusReply) and len(first.actors) == STATUS_PAGE_MAX and first.total_actors == 150
    assert [a.actor_id for a in second.actors] == [f"x{i}" for i in range(100, 150)] and second.offset == 100
    # a frozen clock for the bucket: no refill, so exactly the burst left after the two pages is answered
    server._status_bucket = TokenBucket(STATUS_RATE_PER_S, STATUS_BURST, clock=lambda: 0.0)
    for _ in range(STATUS_BURST + 10):
        peer.send(StatusRequest(rid=3))
    replies = [peer.recv() for _ in range(STATUS_BURST + 10)]
    refused = [r for r in replies if isinstance(r, ErrorReply)]
    assert len(refused) == 10 and all(r.code == "rate_limited" and r.rid == 3 for r in refused)
    assert server.counters()["status_refused"] == len(refused)


def test_a_group_of_another_run_is_refused_by_name_not_as_forgery():
    server = make_server()
    server.run_id = "run-new"
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        assert peer.register("old").run_id == "run-new"
        [prompt] = lease(peer, 1)
        g = canned_group(prompt, 2, 0, "old", vocab_size=64)
        g.run_id = "run-old"
        g.responses[0].version_spans = np.array([[300, 0, 4]], np.int32)  # the old run's version 300: not forgery
        peer.send(g)
        reply = peer.recv()
        assert isinstance(reply, ErrorReply) and reply.code == "other_run" and reply.ref == g.group_id, reply
        assert "from run run-old, this is run run-new" in reply.message
        g.run_id, g.responses[0].version_spans = "run-new", np.array([[0, 0, 4]], np.int32)
        peer.send(g)
        assert isinstance(peer.recv(), Ack)  # the same group for this run is taken
    finally:
        peer.close()
        server.close()


def test_an_actor_silent_for_three_heartbeats_leaves_the_broadcast_list_until_its_next_message():
    now = [100.0]
    server = make_server(clock=lambda: now[0])  # heartbeat interval 0.5 s, declared dead after 5 s
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("quiet")
        assert server.reachable_actor_ids() == ["quiet"]
        now[0] += 3 * 0.5 + 0.01  # three missed heartbeats: probably dead, its close unseen
        assert server.reachable_actor_ids() == [] and server.live_actor_ids() == ["quiet"]
        lease(peer, 1)  # heard from again
        assert server.reachable_actor_ids() == ["quiet"]
    finally:
        peer.close()
        server.close()


def test_a_message_read_just_after_its_connections_close_does_not_bring_a_killed_actor_back():
    now = [100.0]
    server = make_server(clock=lambda: now[0])  # heartbeat interval 0.5 s
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("victim")
        lease(peer, 1)
        (fd,) = set(server._fds.values())
        # libzmq reports the close, then hands over the last message the actor sent before it died (same instant)
        server._on_disconnected(fd)
        assert server.reachable_actor_ids() == []
        lease(peer, 1)
        assert server.reachable_actor_ids() == []  # its last words: still out of the broadcasts
        now[0] += 0.5 + 0.01  # a message more than a heartbeat interval later: the connection lives after all
        lease(peer, 1)
        assert server.reachable_actor_ids() == ["victim"]
    finally:
        peer.close()
        server.close()
