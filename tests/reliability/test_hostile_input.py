"""Hostile input against a real, training learner process.

A peer registers like an actor, leases real prompts and then sends fuzzed frames and valid-looking groups with one
flaw each (wrong lengths, NaN or positive log-probs, out-of-vocabulary tokens, a reused group id, a forged weight
version, a wrong group size, a forged prompt, a prompt never issued). Each is answered with its error code (or a
'duplicate' ack) and counted by reason, while an honest actor process keeps training: the run goes on, no refused
group reaches the ledger, and the final weights are finite. On a CURVE endpoint, clients without a key or with an
unauthorised key get nothing; an authorised actor process trains.

The protocol-level versions of these checks, against an in-process server, are tests/learner/test_endpoint.py,
test_validate.py and test_auth.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest
import torch

from gspo_async.protocol.status import query_status
from gspo_async.protocol.auth import CurveClientKeys
from gspo_async.protocol.client import LearnerUnavailable, RegistrationRefused
from gspo_async.protocol.messages import Ack, ErrorReply, Register, StatusReply
from tests.integration.conftest import ROOT, wait_for
from tests.reliability.conftest import check_against_final_checkpoint, check_ledger
from tests.reliability.hostile import HostilePeer, fuzz_bases, fuzz_frames, one_flaw_groups
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor

pytestmark = pytest.mark.slow

RUN = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
       "actor.prompts_per_lease=2", "learner.heartbeat_timeout_s=3", "learner.lease_timeout_s=10",
       "learner.weight_sync.timeout_s=5", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
       "learner.total_steps=1000000"]
FUZZ_FRAMES = 300
HOSTILE = "hostile"


def status(address: str, curve: Optional[CurveClientKeys] = None) -> Optional[StatusReply]:
    try:
        return query_status(address, timeout_s=2, curve=curve)
    except LearnerUnavailable:
        return None


def counters(address: str) -> dict:
    """The learner's flat counters now (a status query; the learner must answer)."""
    return query_status(address, timeout_s=10).counters


def only_a0_training(address: str, min_version: int, min_groups: int, curve: Optional[CurveClientKeys] = None):
    """A predicate: a0 is the only live actor, the learner reached `min_version`, a0 applied weights at least that
    new minus the staleness bound and has more than `min_groups` groups accepted."""
    def check():
        s = status(address, curve)
        if s is None or [a.actor_id for a in s.actors] != ["a0"] or s.version < min_version:
            return None
        a0 = s.actors[0]
        return s if a0.groups_accepted > min_groups and a0.version >= min_version - 2 else None
    return check


def final_weights_are_finite(run_dir: Path) -> int:
    """Load the final checkpoint's model as any HF tool would; every parameter must be finite. Returns its step."""
    from transformers import AutoModelForCausalLM

    from gspo_async.learner.checkpoint import load_latest

    ckpt = load_latest(run_dir / "checkpoints")
    assert ckpt is not None, f"no checkpoint under {run_dir}"
    model = AutoModelForCausalLM.from_pretrained(ckpt.path / "model")
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite weights in the final checkpoint: {bad[:5]}"
    return ckpt.step


def test_hostile_peer_is_refused_and_counted_while_the_learner_trains_on(cluster_factory, rng, record):
    c = cluster_factory(RUN)
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    a0 = c.actor("a0")
    peer: Optional[HostilePeer] = None
    try:
        wait_for(only_a0_training(address, 2, 0), 120, "two training steps with a0", (learner, a0))

        peer = HostilePeer(address)
        welcome = peer.register(HOSTILE)
        limits, sender = welcome.limits, welcome.actor_id
        assert sender == HOSTILE and limits.max_response_tokens >= limits.group_size + 1
        t_attack, start = time.monotonic(), query_status(address, timeout_s=10)
        (prompt, control_prompt), version = peer.lease(2, timeout_s=45)

        # A valid group first: its id is reused below, and the honest path must still work for this peer.
        control = canned_group(control_prompt, limits.group_size, version, sender, vocab_size=limits.vocab_size,
                               length=2)
        answer = peer.ask(control)
        while isinstance(answer, Ack) and answer.status == "retry_later":  # a full buffer: resend, as actors do
            answer = peer.ask(control)
        assert isinstance(answer, Ack) and answer.status == "accepted", answer

        # (b) valid-looking groups with one flaw each, for a prompt this peer holds.
        before = counters(address)
        cases = one_flaw_groups(prompt, limits, version, sender, control)
        got = {name: peer.ask(group) for name, group, _ in cases}
        after = counters(address)
        for name, group, expected in cases:
            reply = got[name]
            if expected == "duplicate":
                assert isinstance(reply, Ack) and reply.status == "duplicate", (name, reply)
            else:
                assert isinstance(reply, ErrorReply) and reply.code == expected, (name, reply)
        typed = Counter(expected for _, _, expected in cases if expected != "duplicate")
        assert after["groups_rejected"] - before["groups_rejected"] == sum(typed.values())
        assert after["messages_rejected"] - before["messages_rejected"] == sum(typed.values())
        assert after["groups_duplicate"] - before["groups_duplicate"] == 1

        # (a) fuzzed frames: every one is answered; all but some bit flips are refused, each counted.
        mark, before = len(peer.replies), counters(address)
        kinds: Counter = Counter()
        for kind, frames in fuzz_frames(rng, fuzz_bases(prompt, limits, version, sender), FUZZ_FRAMES):
            peer.send_frames(frames)
            kinds[kind] += 1
            peer.drain()  # read as we go so that no reply queue fills up
        peer.barrier()
        after = counters(address)
        fuzz_errors = peer.errors(mark)
        assert sum(fuzz_errors.values()) == after["messages_rejected"] - before["messages_rejected"], fuzz_errors
        assert sum(fuzz_errors.values()) >= FUZZ_FRAMES - kinds["bit_flips"], (fuzz_errors, kinds)
        assert not {"internal", "not_registered"} & set(fuzz_errors), fuzz_errors
        # one reply each, but a fuzzed lease request may still be held for admission
        assert FUZZ_FRAMES - 1 <= peer.answers(mark) <= FUZZ_FRAMES, (peer.answers(mark), kinds)

        peer.goodbye()  # its leases go back to the queue
        end = query_status(address, timeout_s=10)
        attack_s = time.monotonic() - t_attack
        a0_groups = next(a.groups_accepted for a in end.actors if a.actor_id == "a0")

        # Training goes on: new versions, a0 gets the new weights and delivers groups, the learner is alive.
        s = wait_for(only_a0_training(address, end.version + 3, a0_groups), 90, "training after the attack",
                     (learner, a0))
        assert learner.poll() is None
        learner.send_signal(signal.SIGTERM)  # final checkpoint + summary
        assert learner.wait(timeout=120) == 0, c.dump_logs()
        a0.send_signal(signal.SIGKILL)  # its part is over; a graceful stop would wait for acks nobody sends
    finally:
        if peer is not None:
            peer.close()
        c.stop_all()

    # Every refusal is counted by reason: the learner's per-reason counters equal the error codes this peer got
    # (the honest actor had none refused).
    summary = json.loads((c.run_dir / "summary.json").read_text())
    acc, n = summary["accounting"], summary["counters"]
    all_errors = peer.errors()
    assert n["rejected_by_reason"] == dict(all_errors), (n["rejected_by_reason"], all_errors)
    assert all(n["groups_rejected_by_reason"].get(code, 0) >= k for code, k in typed.items()), n
    assert n["internal_errors"] == 0, n
    assert acc["balanced"], acc
    rejected_in_offer = sum(v for k, v in n["groups_rejected_by_reason"].items()
                            if k in ("unknown_prompt", "prompt_mismatch", "group_id_reused"))
    assert n["groups_received"] == (n["groups_accepted"] + n["groups_duplicate"] + n["groups_retry_later"]
                                    + n["groups_late_for_dropped"] + rejected_in_offer), n

    # No refused group reached training: the only record with the hostile sender is its valid control group.
    ledger, figures = check_ledger(c.run_dir)
    figures.update(check_against_final_checkpoint(c.run_dir, ledger))
    records = [*ledger.trained.values(), *ledger.dropped.values()]
    # (the reused id is the control group's own: the control's record is checked below to name its own prompt)
    refused_ids = {g.group_id for _, g, expected in cases if expected not in ("duplicate", "group_id_reused")}
    assert not refused_ids & {r.get("group_id") for r in records}
    from_hostile = [r for r in records if r.get("actor_id") == sender]
    assert all(r["group_id"] == control.group_id and r["prompt_id"] == control.prompt_id for r in from_hostile), \
        from_hostile
    assert all(r.get("actor_id") == "a0" for r in ledger.trained.values() if r["group_id"] != control.group_id)
    assert final_weights_are_finite(c.run_dir) == summary["steps"]

    record({"bad_inputs_sent": len(cases), "bad_inputs_rejected": sum(typed.values()) + 1,
            "by_reason": {name: (got[name].code if isinstance(got[name], ErrorReply) else got[name].status)
                          for name, _, _ in cases},
            "fuzz_frames": FUZZ_FRAMES, "fuzz_kinds": dict(kinds), "fuzz_rejected": sum(fuzz_errors.values()),
            "fuzz_rejected_by_reason": dict(fuzz_errors), "learner_rejected_by_reason": n["rejected_by_reason"],
            "learner_alive": True, "attack_s": round(attack_s, 1),
            "steps_during_attack": end.version - start.version, "steps_after_attack": s.version - end.version,
            "final_step": summary["steps"], **figures})


def make_keys(directory: Path) -> Path:
    """`gspo-async keys DIR`, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "gspo_async", "keys", str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return directory


def test_curve_learner_refuses_clients_without_an_authorised_key(cluster_factory, tmp_path, record):
    keys, other = make_keys(tmp_path / "keys"), make_keys(tmp_path / "other-keys")
    good = CurveClientKeys.load(keys / "client0.key_secret")
    # a valid key pair and the right server key, but not in the learner's authorized_clients
    intruder = CurveClientKeys.load(other / "client0.key_secret", keys / "server.key")
    c = cluster_factory([*RUN, f"learner.curve.secret_key={keys / 'server.key_secret'}"])
    address = f"127.0.0.1:{c.port}"
    learner = c.learner()
    a0 = c._start("a0", ["actor", "--learner", address, "--id", "a0",
                         f"actor.curve.secret_key={keys / 'client0.key_secret'}",
                         f"actor.curve.server_public_key={keys / 'server.key'}"])
    refused = {}
    try:
        # The learner is up and answers an authorised client first, so silence below means refusal.
        wait_for(lambda: status(address, good), 120, "the CURVE learner to answer", (learner,))
        for name, curve in {"no key": None, "unauthorised key": intruder}.items():
            peer = RawActor(address, curve)
            try:
                peer.send(Register("intruder", "i-1", "raw", rid=1))
                refused[name] = peer.poll(3.0) is None
            finally:
                peer.close()
        assert refused == {"no key": True, "unauthorised key": True}, refused
        with pytest.raises(RegistrationRefused, match="refused this client key"):
            query_status(address, timeout_s=5, curve=intruder)

        s = wait_for(only_a0_training(address, 2, 0, good), 120, "two training steps with the authorised a0",
                     (learner, a0))
        assert s.counters["actors_registered"] == 1 and s.counters["messages_rejected"] == 0, s.counters
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=120) == 0, c.dump_logs()
        a0.send_signal(signal.SIGKILL)
    finally:
        c.stop_all()

    n = json.loads((c.run_dir / "summary.json").read_text())["counters"]
    # each refused client retries its handshake, so at least one failure per client and the refused status query
    assert n["handshakes_failed"] >= 3, n
    assert n["actors_registered"] == 1, n
    record({"curve_refused": sum(refused.values()), "handshakes_failed": n["handshakes_failed"],
            "handshakes_ok": n["handshakes_ok"], "steps_with_authorised_actor": s.version})
