"""`gspo-async status`: the status query against a real LearnerServer on loopback (NULL and CURVE), what it prints,
that it never joins the fleet, and its errors."""

import os
import re
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from gspo_async.protocol.status import format_status, print_status, query_status
from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.auth import CurveClientKeys, CurveServerKeys, generate_keys
from gspo_async.protocol.codec import decode, decode_from_learner, encode
from gspo_async.protocol.messages import (
    ActorStatus, ErrorReply, Heartbeat, HeartbeatAck, Lease, LeaseRequest, Limits, ProtocolError, StatusReply,
    StatusRequest)
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.protocol.validate import ACTOR_STATUS
from tests.integration.conftest import wait_for
from tests.support.raw_actor import RawActor

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2)
DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


class Clock:
    """The coordinator's clock, moved by hand: contact times become exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_server(clock=time.monotonic, curve=None) -> LearnerServer:
    coord = Coordinator(PromptSource([(i, [1, 2, 3], str(i)) for i in range(40)]), groups_per_step=2, group_size=2,
                        max_staleness=1, lease_timeout_s=30.0, heartbeat_timeout_s=5.0, clock=clock)
    server = LearnerServer(coord, limits=LIMITS, heartbeat_interval_s=0.5, curve=curve)
    server.start()
    return server


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(clock):
    s = make_server(clock)
    yield s
    s.close()


def heartbeat(peer: RawActor, version: int, rate: float) -> None:
    peer.send(Heartbeat(version, {"tokens_per_s": rate}, rid=3))
    assert isinstance(peer.recv(), HeartbeatAck)


def lease(peer: RawActor, n: int) -> list:
    peer.send(LeaseRequest(n, rid=4))
    reply = peer.recv()
    assert isinstance(reply, Lease)
    return reply.prompts


def test_status_messages_round_trip_and_are_validated():
    reply = StatusReply("s1", 3, [ActorStatus("a0", "hf", 2, 12.5, 1, 0.25, 9.0, 7, 0, "10.0.0.2")],
                        {"issued": 4, "balanced": True}, {"groups_received": 3}, rid=9)
    assert decode_from_learner(encode(reply)) == reply
    assert decode(encode(StatusRequest(rid=7)), limits=LIMITS) == StatusRequest(rid=7)
    bad = StatusReply("s1", 3, [ActorStatus("a0", "hf", 2, -1.0, 1, 0.25)])
    with pytest.raises(ProtocolError, match=r"actors\[0\]\.tokens_per_s=-1\.0 is outside"):
        decode_from_learner(encode(bad))
    with pytest.raises(ProtocolError, match="unknown field 'extra'"):
        decode([msgpack.packb({"v": 1, "t": "status_request", "extra": 1})], limits=LIMITS)


def test_actor_status_fields_are_documented():
    for f in ACTOR_STATUS.fields:
        assert f"| `{f.name}` |" in DOC, f.name


def test_status_reports_each_actor_and_the_accounting(server, clock):
    a0, a1 = RawActor(f"127.0.0.1:{server.port}"), RawActor(f"127.0.0.1:{server.port}")
    try:
        a0.register("a0", "i0")
        clock.now += 1.0
        a1.register("a1", "i1")
        heartbeat(a0, 0, 250.0)
        heartbeat(a1, 0, float("nan"))  # a rate not known yet travels as 0
        # admission (1 + 0 + 1) * 2 = 4 leases, each of the two actors at most its fair share ceil(4 / 2) = 2
        assert len(lease(a0, 3)) == 2 and len(lease(a1, 3)) == 2
        clock.now += 2.5
        reply = query_status(f"127.0.0.1:{server.port}", timeout_s=5)
    finally:
        a0.close()
        a1.close()
    rows = {r.actor_id: r for r in reply.actors}
    assert set(rows) == {"a0", "a1"}
    assert (rows["a0"].engine, rows["a0"].version, rows["a0"].tokens_per_s, rows["a0"].leases) == ("raw", 0, 250.0, 2)
    assert (rows["a1"].tokens_per_s, rows["a1"].leases) == (0.0, 2)
    assert rows["a0"].last_contact_s == pytest.approx(2.5) and rows["a1"].last_contact_s == pytest.approx(2.5)
    assert rows["a0"].registered_s == pytest.approx(3.5) and rows["a0"].address == "127.0.0.1"
    assert reply.session == server.session and reply.version == 0
    assert reply.accounting == {"issued": 4, "trained": 0, "dropped": 0, "in_flight": 4, "buffered": 0,
                                "training": 0, "pending_reissue": 0, "balanced": True}
    assert reply.counters["leases_issued"] == 4 and reply.counters["actors_registered"] == 2


def test_a_status_query_never_joins_the_fleet_nor_refreshes_an_actor(server, clock):
    address = f"127.0.0.1:{server.port}"
    before = query_status(address, timeout_s=5)
    assert before.actors == [] and before.counters["actors_registered"] == 0
    actor = RawActor(address)
    try:
        actor.register("a0", "i0")
        clock.now += 3.0
        for _ in range(3):
            query_status(address, timeout_s=5)
        actor.send(StatusRequest(rid=11))  # on the actor's own connection: answered, but no proof of life
        on_actor = actor.recv()
        assert isinstance(on_actor, StatusReply) and on_actor.rid == 11
        assert [r.last_contact_s for r in on_actor.actors] == [pytest.approx(3.0)]
        after = query_status(address, timeout_s=5)
        assert server.live_actor_ids() == ["a0"]
        assert after.counters["actors_registered"] == 1 and after.counters["actors_alive"] == 1
        assert server.counters()["received_status_request"] == 6
        clock.now += 2.5  # 5.5 s without a real message: the status queries did not keep it alive
        deadline = time.monotonic() + 60  # a condition awaited, not a timing bound: the tick runs every 0.1 s
        while server.live_actor_ids() and time.monotonic() < deadline:
            time.sleep(0.02)  # the server's tick runs every 0.1 s
        assert server.live_actor_ids() == []
        assert query_status(address, timeout_s=5).counters["actors_dead"] == 1
    finally:
        actor.close()


def test_print_status_prints_the_fleet(server, clock, capsys):
    actor = RawActor(f"127.0.0.1:{server.port}")
    try:
        actor.register("worker-7", "i7")
        heartbeat(actor, 0, 42.0)
        lease(actor, 2)
        clock.now += 1.25
        assert print_status(f"127.0.0.1:{server.port}", timeout_s=5) == 0
    finally:
        actor.close()
    out = capsys.readouterr().out
    assert f"session {server.session}  version 0" in out
    assert "buffered groups 0 | in-flight leases 2" in out
    assert "prompts: issued 2 / trained 0 / dropped 0 / in flight 2" in out and "balanced" in out
    assert re.search(r"worker-7\s+raw\s+0\s+42\.0\s+2\s+1\.2s ago\s+127\.0\.0\.1", out), out
    assert "actors: 1 live (1 registered, 0 left, 0 declared dead)" in out


def test_format_status_without_actors_says_so():
    text = format_status(StatusReply("s", 5, [], {"issued": 0, "balanced": True}, {}), "h:1")
    assert "version 5" in text and "actors: 0 live" in text and "actor  engine" not in text


def test_no_learner_is_a_clear_error_within_the_timeout(capsys):
    with zmq.Context() as ctx:  # a port nobody answers on
        sock = ctx.socket(zmq.REP)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close(linger=0)
    t0 = time.monotonic()
    assert print_status(f"127.0.0.1:{port}", timeout_s=0.5) == 1
    assert time.monotonic() - t0 >= 0.5  # it waited out the timeout (a hang would be caught by pytest-timeout)
    err = capsys.readouterr().err
    assert "no learner answered" in err and f"127.0.0.1:{port}" in err


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert print_status("no-port-here", timeout_s=1) == 2
    assert "host:port" in capsys.readouterr().err
    assert print_status("127.0.0.1:5555", timeout_s=1, server_key=str(tmp_path / "server.key")) == 2
    assert "--server-key needs --key" in capsys.readouterr().err
    assert print_status("127.0.0.1:5555", timeout_s=1, key=str(tmp_path / "missing.key_secret")) == 2
    assert "gspo-async keys" in capsys.readouterr().err


def test_an_error_reply_is_reported(capsys):
    """A learner that does not know the status message (an older schema) answers with an error."""
    with zmq.Context() as ctx:
        router = ctx.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        def answer() -> None:
            if router.poll(5000):
                routing, *_ = router.recv_multipart()
                router.send_multipart([routing, *encode(ErrorReply("unknown_type", "no such message", rid=1))])

        t = threading.Thread(target=answer)
        t.start()
        assert print_status(f"127.0.0.1:{port}", timeout_s=5) == 1
        t.join()
        router.close(linger=0)
    assert "unknown_type" in capsys.readouterr().err


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root, clients=2)
    os.remove(root / "authorized_clients" / "client1.key")  # a valid pair the learner does not authorise
    other = tmp_path_factory.mktemp("other-keys")
    generate_keys(other)
    return root, other


def test_status_over_curve_needs_an_authorised_key(keys, capsys):
    root, other = keys
    server = make_server(curve=CurveServerKeys.load(root / "server.key_secret"))
    address = f"127.0.0.1:{server.port}"
    try:
        assert print_status(address, timeout_s=5, key=str(root / "client0.key_secret"),
                            server_key=str(root / "server.key")) == 0
        assert f"session {server.session}" in capsys.readouterr().out
        # server.key next to the client key is the default
        assert query_status(address, 5, CurveClientKeys.load(root / "client0.key_secret")).session == server.session
        refusals = {  # (key, server key) -> what the error says
            (None, None): "requires CURVE keys: pass --key",
            (root / "client1.key_secret", None): "not in the learner's authorized_clients",
            (root / "client0.key_secret", other / "server.key"): "wrong --server-key"}
        for (key, server_key), says in refusals.items():
            t0 = time.monotonic()
            assert print_status(address, timeout_s=300, key=key and str(key),
                                server_key=server_key and str(server_key)) == 1
            # Refused at the handshake, not after the timeout: the bound is far from both a loaded machine's
            # handshake (seconds) and the timeout (300 s).
            assert time.monotonic() - t0 < 100
            # The in-process server may log its own warning about the refused handshake on the same stream.
            errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and says in errors[0], errors
        assert server.live_actor_ids() == []
        # the server counts a failed handshake when its socket monitor reports it, which may come after the client
        # has given up: wait for the count (a condition, bounded far above a loaded machine's event delay)
        wait_for(lambda: server.counters()["handshakes_failed"] >= 3, 60, "three failed handshakes counted")
        assert server.counters()["received_status_request"] == 2
    finally:
        server.close()
