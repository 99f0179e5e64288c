"""CURVE keys and the bind policy: only authorised actors get anything from a CURVE learner."""

import os
import stat

import pytest

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.auth import CurveClientKeys, CurveServerKeys, check_bind, generate_keys, is_loopback
from gspo_async.protocol.messages import Limits, Register
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.protocol.client import ActorClient, RegistrationRefused
from tests.support.actor_process import FakeActorProcess, wait_until
from tests.support.raw_actor import RawActor

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2)


def coordinator():
    return Coordinator(PromptSource([(i, [1, 2], str(i)) for i in range(50)]), groups_per_step=2, group_size=2,
                       max_staleness=1, lease_timeout_s=30, heartbeat_timeout_s=5)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root, clients=2)
    os.remove(root / "authorized_clients" / "client1.key")  # client1 has a valid pair but is not authorised
    other = tmp_path_factory.mktemp("other-keys")
    generate_keys(other)
    return root, other


def test_generate_keys_layout_and_permissions(tmp_path):
    written = generate_keys(tmp_path / "k", clients=2)
    names = sorted(p.relative_to(tmp_path / "k").as_posix() for p in written)
    assert names == ["authorized_clients/client0.key", "authorized_clients/client1.key", "client0.key",
                     "client0.key_secret", "client1.key", "client1.key_secret", "server.key", "server.key_secret"]
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "server.key_secret").st_mode) == 0o600
    with pytest.raises(FileExistsError, match="never overwritten"):
        generate_keys(tmp_path / "k")
    with pytest.raises(ValueError, match="at least one"):
        generate_keys(tmp_path / "j", clients=0)
    server = CurveServerKeys.load(tmp_path / "k" / "server.key_secret")
    client = CurveClientKeys.load(tmp_path / "k" / "client0.key_secret")
    assert client.public in server.authorized and client.server_public == server.public and len(server.authorized) == 2


def test_key_loading_errors_name_the_fix(tmp_path, keys):
    root, _ = keys
    with pytest.raises(FileNotFoundError, match="gspo-async keys"):
        CurveServerKeys.load(tmp_path / "missing.key_secret")
    with pytest.raises(ValueError, match="not the public"):
        CurveClientKeys.load(root / "client0.key")
    with pytest.raises(FileNotFoundError, match="authorized clients directory"):
        CurveServerKeys.load(root / "server.key_secret", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no actor could connect"):
        CurveServerKeys.load(root / "server.key_secret", tmp_path / "empty")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.5", True), ("localhost", True),
                                             ("::1", True), ("0.0.0.0", False), ("*", False), ("10.1.2.3", False),
                                             ("::", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_keys_or_the_insecure_flag(keys):
    root, _ = keys
    with pytest.raises(ValueError, match="refusing to bind the learner to '0.0.0.0' without authentication"):
        LearnerServer(coordinator(), host="0.0.0.0", limits=LIMITS)
    check_bind("0.0.0.0", CurveServerKeys.load(root / "server.key_secret"), insecure=False)
    server = LearnerServer(coordinator(), host="0.0.0.0", limits=LIMITS, insecure=True)
    server.start()
    try:
        client = ActorClient(f"127.0.0.1:{server.port}", "a0")
        assert client.connect(5).actor_id == "a0"
        client.close()
    finally:
        server.close()


@pytest.mark.slow
def test_curve_endpoint_serves_only_authorised_actors(keys):
    root, other = keys
    server = LearnerServer(coordinator(), limits=LIMITS, curve=CurveServerKeys.load(root / "server.key_secret"))
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        refused = {
            "no key": None,
            "unauthorised key": CurveClientKeys.load(root / "client1.key_secret"),
            "wrong server key": CurveClientKeys.load(other / "client0.key_secret", other / "server.key"),
        }
        for name, curve in refused.items():
            client = ActorClient(address, "intruder", curve=curve)
            with pytest.raises(RegistrationRefused):
                client.connect(5)
        # a bare socket without keys sends a valid Register and gets nothing back
        raw = RawActor(address)
        raw.send(Register("raw", "i", "raw", rid=1))
        assert raw.poll(0.5) is None
        raw.close()
        wait_until(lambda: server.counters()["handshakes_failed"] >= 4, what="four refused handshakes")
        assert server.counters()["messages_received"] == 0 and server.live_actor_ids() == []
        # an authorised actor process works end to end
        actor = FakeActorProcess(address, "good", "--curve-secret", str(root / "client0.key_secret"),
                                 "--curve-server", str(root / "server.key"))
        try:
            assert actor.call("connect")["actor_id"] == "good"
            assert actor.call("lease", n=2)["prompt_ids"] == [0, 1]
            actor.call("push")
            assert actor.call("wait_acked")["acked"]
            assert len(server.take_groups(2, timeout_s=5)) == 2
        finally:
            actor.close()
    finally:
        server.close()
