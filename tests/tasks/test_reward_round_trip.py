"""Per-function rewards and failed-call counts go from the actor's scorer over the wire into the learner's metrics
unchanged: RewardRunner -> GroupScore.figures in RolloutGroup.timings -> encode / decode -> RewardMonitor; the last
error rides in a heartbeat's stats to the learner's stop message."""

import textwrap

import numpy as np
import pytest

from gspo_async.protocol.codec import decode, encode
from gspo_async.protocol.messages import Heartbeat, Limits, Response, RolloutGroup
from gspo_async.tasks.reward_checks import RewardMonitor, last_reward_error
from gspo_async.tasks.scoring import RewardRunner, RewardSpec

LIMITS = Limits(vocab_size=10, max_prompt_tokens=4, max_response_tokens=4, group_size=3)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "round_trip_rewards.py").write_text(textwrap.dedent("""
        def picky(q, c, a):
            if c == "x":
                raise ValueError("cannot read " + c)
            return 1.0 if c == a else -0.5

        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            if solution_str == "bad":
                return "not a number"
            return {"score": float(solution_str == ground_truth), "chars": float(len(solution_str))}

        def batch(prompts, completions, answer, **kwargs):
            return [None if c == "4" else 0.25 for c in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "round_trip_rewards"


def as_group(k, score, limits=LIMITS):
    """The RolloutGroup an actor sends for one scored group (as gspo_async.actor.main builds it)."""
    from gspo_async.actor.main import _MAX_REWARD_FIGURES

    responses = [Response(np.array([5], np.int32), np.array([-0.5], np.float32), float(r), "stop",
                          np.array([[0, 0, 1]], np.int32)) for r in score.rewards]
    return RolloutGroup(f"a0:{k}:ab", k, "a0", np.array([1, 2], np.int32), responses,
                        {"gen_s": 0.1, "reward_s": 0.01, **score.figures(max_items=_MAX_REWARD_FIGURES)})


def test_per_function_means_and_failures_by_kind_reach_the_learners_metrics(user_module):
    specs = [RewardSpec("exact", name="accuracy"), RewardSpec(f"{user_module}:picky", weight=0.5),
             RewardSpec(f"{user_module}:compute_score"), RewardSpec(f"{user_module}:batch", weight=2.0)]
    with RewardRunner(specs, workers=0) as runner:
        scores = runner.score_groups([("1+1=", ["2", "3", "x"], "2", {}), ("2+2=", ["4", "4", "bad"], "4", {})])
        last_error = runner.last_error
    received = [decode(encode(as_group(k, s)), limits=LIMITS) for k, s in enumerate(scores)]
    assert [[r.reward for r in g.responses] for g in received] == [s.rewards for s in scores]
    metrics = RewardMonitor(constant_steps=0).observe(received)

    def mean(name):
        values = [v for s in scores for v in s.by_fn[name] if v is not None]
        return sum(values) / len(values)

    assert metrics["reward/accuracy/mean"] == pytest.approx(mean("accuracy")) == pytest.approx(3 / 6)
    assert metrics["reward/picky/mean"] == pytest.approx(mean("picky")) == pytest.approx((1 - .5 + 0 + 1 + 1 - .5) / 6)
    assert metrics["reward/compute_score/mean"] == pytest.approx(mean("compute_score")) == pytest.approx(3 / 6)
    assert metrics["reward/batch/mean"] == pytest.approx(0.25)  # the two None (not applicable) are left out
    assert metrics["reward/compute_score/chars"] == pytest.approx((1 + 1 + 1 + 1 + 1) / 5)  # 'bad' returned no dict
    # failed calls by kind: picky raised on 'x', compute_score returned a string for 'bad'
    assert metrics["reward/errors/exception"] == 1 and metrics["reward/errors/bad_value"] == 1
    assert metrics["reward/errors/timeout"] == 0
    assert metrics["reward/error_frac"] == pytest.approx(2 / 6)  # responses with at least one failed call

    # the last error rides in the actor's heartbeat stats, which the learner quotes when it stops the run
    hb = decode(encode(Heartbeat(version=1, stats={"reward_errors": 2.0, "reward_last_error": last_error})),
                limits=LIMITS)
    assert last_error.startswith("compute_score: bad_value:")
    assert last_reward_error([{"actor_id": "a0", "stats": hb.stats}]) == f"{last_error} (reported by a0)"


def test_many_functions_fill_the_map_without_breaking_the_group():
    """A run with more functions than a group's map holds still sends valid groups; the failure counts come
    first, so the error limit always sees them."""
    from gspo_async.tasks.scoring import GroupScore

    score = GroupScore([0.0, 1.0], by_fn={f"f{i}": [0.0, 1.0] for i in range(40)}, failed=1)
    score.errors["timeout"] = 1
    limits = Limits(vocab_size=10, max_prompt_tokens=4, max_response_tokens=4, group_size=2)
    group = decode(encode(as_group(0, score)), limits=limits)
    assert len(group.timings) <= limits.max_items
    metrics = RewardMonitor(constant_steps=0).observe([group])
    assert metrics["reward/errors/timeout"] == 1 and metrics["reward/error_frac"] == 0.5
    assert "reward/f0/mean" in metrics and "reward/f39/mean" not in metrics
