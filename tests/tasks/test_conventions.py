"""Reward functions are bound by parameter name: each convention users bring is called the way it expects."""

import pytest

from gspo_async.tasks.conventions import RewardBindError, bind, judge
from gspo_async.tasks.scoring import RewardRunner

GROUP = ("7+5=", ["12", "13", "skip"], "12", {"level": 2})


def per_response_aliases(prompt, completion, ground_truth):
    return float(completion == ground_truth) + (0.5 if prompt == "7+5=" else 0.0)


def three_positional(q, c, a):  # the shape of many libraries' helpers: other names, three positions
    return float(c == a)


def four_positional(q, c, a, extra):
    return float(c == a) * extra["level"]


def with_kwargs(response, answer, **kwargs):
    return float(response == answer) + kwargs["level"]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": float(solution_str == ground_truth), "acc": float(solution_str == ground_truth),
            "source_ok": float(data_source == "arith")}


def compute_score_float(data_source, solution_str, ground_truth, extra_info=None):
    return float(solution_str == ground_truth) * extra_info["level"]


def trl_batch(prompts, completions, answer, level, **kwargs):
    return [None if c == "skip" else float(c == a) + lv for c, a, lv in zip(completions, answer, level)]


def trl_batch_minimal(completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("fn, convention, expected", [
    (per_response_aliases, "per-response", [1.5, 0.5, 0.5]),
    (three_positional, "positional", [1.0, 0.0, 0.0]),
    (four_positional, "positional", [2.0, 0.0, 0.0]),
    (with_kwargs, "per-response", [3.0, 2.0, 2.0]),
    (compute_score, "verl", [1.0, 0.0, 0.0]),
    (compute_score_float, "verl", [2.0, 0.0, 0.0]),
    (trl_batch, "batch", [3.0, 2.0, 0.0]),
    (trl_batch_minimal, "batch", [2.0, 2.0, 4.0]),
])
def test_each_convention_binds_and_scores(fn, convention, expected):
    bound = bind(fn, fn.__name__, f"tests:{fn.__name__}")
    assert bound.convention == convention
    runner = RewardRunner("exact", workers=0, data_source="arith")
    runner.functions = [(bound, 1.0)]
    score = runner.score_groups([GROUP])[0]
    assert score.rewards == expected
    assert not score.errors


def test_verl_dict_extras_become_metrics_and_batch_none_is_not_applicable():
    runner = RewardRunner("exact", workers=0, data_source="arith")
    runner.functions = [(bind(compute_score, "cs", "x:cs"), 1.0), (bind(trl_batch, "fmt", "x:fmt"), 0.5)]
    score = runner.score_groups([GROUP])[0]
    assert score.rewards == [1.0 + 0.5 * 3.0, 0.0 + 0.5 * 2.0, 0.0]
    figures = score.figures()
    assert figures["reward_pos:cs:acc"] == 1.0 and figures["reward_n:cs:acc"] == 3
    assert figures["reward_pos:cs:source_ok"] == 3.0
    assert figures["reward_n:fmt"] == 2 and figures["reward_pos:fmt"] == 5.0  # the None is left out


def test_batch_of_wrong_length_is_a_bad_value_for_every_response():
    def short(prompts, completions):
        return [1.0]

    runner = RewardRunner("exact", workers=0)
    runner.functions = [(bind(short, "short", "x:short"), 1.0)]
    score = runner.score_groups([GROUP])[0]
    assert score.errors == {"bad_value": 3} and "list of 3 values" in score.last_error


def test_a_signature_that_fits_nothing_is_refused_with_the_rules():
    def two(x, y):
        return 0.0

    with pytest.raises(RewardBindError) as err:
        bind(two, "two", "m:two")
    text = str(err.value)
    assert "two(x, y)" in text and "positional" in text and "solution_str" in text


def test_aliases_of_one_value_twice_are_refused():
    def both(response, completion):
        return 0.0

    with pytest.raises(RewardBindError, match="aliases"):
        bind(both, "both", "m:both")


@pytest.mark.parametrize("value, expected", [
    (1, (1.0, {}, None)), (True, (1.0, {}, None)), ({"score": 0.5, "f": 2}, (0.5, {"f": 2.0}, None)),
])
def test_judge_accepts_numbers_bools_and_score_dicts(value, expected):
    assert judge(value, allow_none=False) == expected


@pytest.mark.parametrize("value", [float("nan"), "1.0", None, {"acc": 1.0}, {"score": "x"}, [1.0]])
def test_judge_refuses_what_is_not_a_number(value):
    score, _, error = judge(value, allow_none=False)
    assert score == 0.0 and error[0] == "bad_value"
