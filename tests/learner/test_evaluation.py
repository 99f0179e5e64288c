"""Evaluation on the fleet: rounds by version (pure bookkeeping, fake clock) and the endpoint's routing over real
sockets: evaluation prompts are leased first and outside admission, their groups are scored and never trained on,
and a training group is never counted as evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.learner.evaluation import EVAL_PROMPT_ID_BASE, FleetEvaluation, eval_metrics
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.messages import (
    Ack, ErrorReply, Lease, LeaseRequest, Limits, ProtocolError, Response, RolloutGroup)
from tests.support.canned import canned_group
from tests.support.raw_actor import RawActor


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def item(*tokens: int) -> tuple[np.ndarray, str, dict]:
    return np.array(tokens, np.int32), "ans", {}


def group(prompt, rewards: list[float], version: int = 0, length: int = 3, group_id: str = "") -> RolloutGroup:
    responses = [Response.single_version(np.arange(length) % 7, np.full(length, -0.5), r, "stop", version)
                 for r in rewards]
    return RolloutGroup(group_id or f"g{prompt.prompt_id}-{version}", prompt.prompt_id, "a", prompt.tokens,
                        responses, {})


def make(n: int = 2, clock: Clock | None = None) -> FleetEvaluation:
    return FleetEvaluation({"default": [item(1, 2), item(3, 4)], "hard": [item(5, 6, 7)]}, n=n,
                           lease_timeout_s=10.0, clock=clock or Clock())


def test_a_round_reports_accuracy_pass_at_k_and_length_per_set_once_every_prompt_is_answered():
    ev = make()
    assert ev.start(version=3) == 3
    prompts = ev.lease("a", 10)
    assert [p.eval_set for p in prompts] == ["default", "default", "hard"]
    assert all(ev.owns(p.prompt_id) and p.prompt_id >= EVAL_PROMPT_ID_BASE for p in prompts)
    assert ev.offer("a", group(prompts[0], [1.0, 0.0], version=3, length=2)) == "accepted"
    assert ev.offer("a", group(prompts[1], [0.0, 0.0], version=4, length=4)) == "accepted"
    assert ev.completed() == []  # the hard set is still out
    assert ev.offer("a", group(prompts[2], [1.0, 1.0], version=3, length=6)) == "accepted"
    [done] = ev.completed()
    assert done["version"] == 3 and done["newest_version"] == 4
    assert done["sets"]["default"] == {"accuracy": 0.25, "pass_at_k": 0.5, "mean_length": 3.0, "prompts": 2.0}
    assert done["sets"]["hard"] == {"accuracy": 1.0, "pass_at_k": 1.0, "mean_length": 6.0, "prompts": 1.0}
    assert ev.pending == 0 and ev.completed() == []
    assert eval_metrics("default", done["sets"]["default"]) == {
        "eval/accuracy": 0.25, "eval/pass_at_k": 0.5, "eval/mean_length": 3.0}
    assert set(eval_metrics("hard", done["sets"]["hard"])) == {
        "eval/hard/accuracy", "eval/hard/pass_at_k", "eval/hard/mean_length"}


def test_groups_from_weights_older_than_the_round_are_not_counted_and_the_prompt_is_leased_again():
    ev = make(n=1)
    ev.start(version=5)
    first = ev.lease("a", 1)[0]
    assert ev.offer("a", group(first, [1.0], version=4)) == "dropped"
    assert ev.counts["groups_older_weights"] == 1
    again = ev.lease("b", 1)[0]
    assert again.prompt_id == first.prompt_id  # back at the front of the queue
    assert ev.offer("b", group(again, [0.0], version=5)) == "accepted"
    assert ev.offer("b", group(again, [0.0], version=5)) == "duplicate"  # a resend


def test_expired_and_abandoned_leases_are_queued_again_and_rounds_finish_in_order():
    clock = Clock()
    ev = make(n=1, clock=clock)
    ev.start(version=0)
    ev.start(version=2)
    held = ev.lease("a", 2)
    assert ev.lease("b", 1)[0].eval_set == "hard"
    ev.forget("b")
    clock.t = 10.0
    assert ev.tick() == 2  # a's two leases expired
    order = [p.prompt_id for p in ev.lease("c", 10)]
    assert order[:3] == sorted(p.prompt_id for p in held) + [order[2]] and len(order) == 6
    prompts = {p.prompt_id: p for r in ev._rounds.values() for p in r.prompts.values()}
    late_round = [pid for pid in order if pid >= EVAL_PROMPT_ID_BASE + 3]
    for pid in late_round:  # the later round finishes first, but is handed out after the earlier one
        ev.offer("c", group(prompts[pid], [1.0], version=2))
    assert ev.completed() == []
    for pid in order:
        if pid not in late_round:
            ev.offer("c", group(prompts[pid], [0.0], version=2))
    done = ev.completed()
    assert [d["version"] for d in done] == [0, 2]
    assert [d["sets"]["default"]["accuracy"] for d in done] == [0.0, 1.0]


def test_a_late_answer_from_the_first_holder_counts_after_the_lease_expired():
    clock = Clock()
    ev = make(n=1, clock=clock)
    ev.start(version=0)
    p = ev.lease("a", 1)[0]
    clock.t = 11.0
    ev.tick()
    assert ev.offer("a", group(p, [1.0])) == "accepted"
    assert p.prompt_id not in [q.prompt_id for q in ev.lease("b", 10)]  # not leased again after it counted


@pytest.mark.parametrize("case", ["never_issued", "other_tokens", "wrong_n"])
def test_groups_that_do_not_answer_an_issued_evaluation_prompt_are_refused(case):
    ev = make(n=2)
    ev.start(version=0)
    p = ev.lease("a", 1)[0]
    g = group(p, [1.0, 0.0])
    if case == "never_issued":
        g.prompt_id = EVAL_PROMPT_ID_BASE + 999
    elif case == "other_tokens":
        g.prompt_tokens = np.array([9, 9], np.int32)
    else:
        g.responses = g.responses[:1]
    with pytest.raises(ProtocolError) as err:
        ev.offer("a", g)
    assert err.value.code == {"never_issued": "unknown_prompt", "other_tokens": "prompt_mismatch",
                              "wrong_n": "group_size"}[case]


def test_construction_and_start_errors_name_the_fix():
    with pytest.raises(ValueError, match="task.eval_sets"):
        FleetEvaluation({"default": [item(1)], "empty": []}, n=1, lease_timeout_s=1.0)
    with pytest.raises(RuntimeError, match="learner.eval_on"):
        FleetEvaluation({}, n=1, lease_timeout_s=1.0).start(0)
    assert not FleetEvaluation.owns(EVAL_PROMPT_ID_BASE - 1)


# ------------------------------------------------------------------------------------------------- endpoint
LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=4,
                max_message_bytes=1 << 20)


@pytest.fixture
def server():
    items = [(i, [1 + i % 9, 2, 3], str(i), {}) for i in range(1000)]
    coord = Coordinator(PromptSource(items), groups_per_step=2, group_size=4, max_staleness=0, lease_timeout_s=30.0,
                        heartbeat_timeout_s=5.0)
    evaluation = FleetEvaluation({"default": [item(7, 7), item(8, 8, 8)], "hard": [item(9)]}, n=2,
                                 lease_timeout_s=30.0)
    s = LearnerServer(coord, limits=LIMITS, heartbeat_interval_s=0.5, evaluation=evaluation)
    s.start()
    yield s
    s.close()


def ask(peer: RawActor, n: int, returned: list[int] | None = None) -> Lease:
    peer.send(LeaseRequest(n, returned=returned or [], rid=3))
    reply = peer.recv()
    assert isinstance(reply, Lease), reply
    return reply


def test_evaluation_prompts_are_leased_first_outside_admission_scored_and_never_trained(server):
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("a")
        train = ask(peer, 8).prompts  # admission: max_staleness 0 -> one batch of 2 prompts
        assert len(train) == 2 and all(p.eval_set == "" for p in train)
        assert ask(peer, 8).reason == "admission"
        assert server.evaluation_rounds(start_version=0) == []
        evals = ask(peer, 2)
        assert [p.eval_set for p in evals.prompts] == ["default", "default"]  # admission closed, still granted
        rest = ask(peer, 8).prompts  # one kind per reply: the last evaluation prompt alone
        assert [p.eval_set for p in rest] == ["hard"]
        for i, p in enumerate(evals.prompts + rest):
            peer.send(canned_group(p, 2, 0, "a", vocab_size=64))  # rewards 0, 1: accuracy 0.5, pass@2 1
            ack = peer.recv()
            assert isinstance(ack, Ack) and ack.status == "accepted"
        [done] = server.evaluation_rounds()
        assert done["version"] == 0
        assert done["sets"]["default"]["accuracy"] == 0.5 and done["sets"]["hard"]["pass_at_k"] == 1.0
        counters = server.counters()
        assert counters["groups_accepted"] == 0  # nothing went to the training buffer
        assert server.take_groups(2, timeout_s=0.0) == []
        # a training group is trained, never scored as evaluation; an evaluation-sized group for it is refused
        peer.send(canned_group(train[0], 2, 0, "a", vocab_size=64))
        err = peer.recv()
        assert isinstance(err, ErrorReply) and err.code == "group_size"
        for p in train:
            peer.send(canned_group(p, 4, 0, "a", vocab_size=64))
            assert peer.recv().status == "accepted"
        assert len(server.take_groups(2, timeout_s=5.0)) == 2
        assert server.evaluation.counts["groups_counted"] == 3
        # an evaluation id this learner did not issue is refused, never buffered
        bogus = canned_group(train[0], 4, 0, "a", vocab_size=64)
        bogus.prompt_id = EVAL_PROMPT_ID_BASE + 50
        peer.send(bogus)
        err = peer.recv()
        assert isinstance(err, ErrorReply) and err.code == "unknown_prompt"
    finally:
        peer.close()


def test_without_fleet_evaluation_an_evaluation_id_is_an_unknown_prompt():
    items = [(i, [1, 2, 3], str(i), {}) for i in range(10)]
    coord = Coordinator(PromptSource(items), groups_per_step=2, group_size=4, max_staleness=0, lease_timeout_s=30.0,
                        heartbeat_timeout_s=5.0)
    server = LearnerServer(coord, limits=LIMITS, heartbeat_interval_s=0.5)
    server.start()
    peer = RawActor(f"127.0.0.1:{server.port}")
    try:
        peer.register("a")
        p = ask(peer, 1).prompts[0]
        g = canned_group(p, 4, 0, "a", vocab_size=64)
        g.prompt_id = EVAL_PROMPT_ID_BASE
        peer.send(g)
        err = peer.recv()
        assert isinstance(err, ErrorReply) and err.code == "unknown_prompt"
        assert server.evaluation_rounds() == []
    finally:
        peer.close()
        server.close()


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, message", [
    ("task.eval_sets={Hard: {}}", "must be 1-40 of a-z"),
    ("task.eval_sets={default: {}}", "not 'default'"),
    ("task.eval_sets={three: {eval_sets: {}}}", "cannot nest"),
    ("task.eval_sets={three: {eval_size: -1}}", "task.eval_sets.three"),
    ("learner.eval_n=9", "learner.eval_n=9 exceeds num_return_sequences_in_group=8"),
    ("learner.eval_max_new_tokens=9", "eval_max_new_tokens=9 exceeds response_length=8"),
])
def test_fleet_evaluation_settings_are_checked_with_the_fix_named(override, message):
    from gspo_async.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("configs/quickstart.yaml", ["learner.eval_on=fleet", override])


def test_an_eval_set_is_the_task_with_its_own_settings_on_top_and_sampling_is_shared():
    from gspo_async.config import load_config
    from gspo_async.tasks.evaluate import evaluation_sampling

    cfg = load_config("configs/quickstart.yaml", ["task.eval_sets={three: {options: {digits: 3}, eval_size: 4}}",
                                                  "learner.eval_temperature=0.7"])
    three = cfg.task.eval_set_config("three")
    assert (three.name, three.options, three.eval_size, three.eval_sets) == ("arithmetic", {"digits": 3}, 4, {})
    sampling = evaluation_sampling(cfg)
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_new_tokens) == (0.7, 1.0, 0, 8)
