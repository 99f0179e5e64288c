import textwrap

import pytest

from gspo_async.tasks.scoring import (
    RewardRunner,
    exact_match,
    RewardSpec,
    extract_final_answer,
    last_boxed,
    math_answer,
)


def test_exact_match_normalises_whitespace_only():
    assert exact_match("", " 42\n", "42") == 1.0
    assert exact_match("", "a  b\tc", "a b c") == 1.0
    assert exact_match("", "42.", "42") == 0.0
    assert exact_match("", "ab", "a b") == 0.0
    assert exact_match("", "", "") == 1.0


def test_last_boxed_handles_nesting_and_unclosed():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed(r"\boxed{oops") is None
    assert last_boxed("no box") is None


def test_extract_final_answer_prefers_boxed_then_hashes():
    assert extract_final_answer(r"3 then \boxed{7} then 9") == "7"
    assert extract_final_answer("work 12 ... #### 1,234\n") == "1,234"
    assert extract_final_answer("it is 3 or maybe 5.") is None
    assert extract_final_answer("no digits") is None


@pytest.mark.parametrize(
    "response, answer, reward",
    [
        (r"The answer is \boxed{1000}.", "1,000", 1.0),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        ("#### .5", "1/2", 1.0),
        ("so -3", "#### -3.0", 1.0),
        (r"\boxed{x^{2}+1}", r"\boxed{x^{2} + 1}", 1.0),
        ("Natalia sold 48/2 = 24 clips... #### 72", "She sold 48+24 = 72 clips.\n#### 72", 1.0),
        (r"\boxed{3}", "4", 0.0),
        ("#### 7", "#### 72", 0.0),
        ("nothing here", "5", 0.0),
        (r"\boxed{}", "", 0.0),
    ],
)
def test_math_answer(response, answer, reward):
    assert math_answer("", response, answer) == reward


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            import time

            def length(prompt, response, answer, meta):
                return float(len(response)) + meta.get("bonus", 0)

            def picky(prompt, response, answer, meta):
                if response == "raise":
                    raise RuntimeError("boom")
                if response == "hang":
                    time.sleep(60)
                if response == "nan":
                    return float("nan")
                if response == "text":
                    return "1.0"
                return 1.0

            def dies(prompt, response, answer):
                if response == "die":
                    import os
                    os._exit(3)
                return 1.0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_builtin_runner_scores_inline():
    runner = RewardRunner("exact")
    assert runner.score("1+1=", ["2", " 2 ", "3"], "2") == [1.0, 1.0, 0.0]
    assert runner._pool is None  # no worker process for a built-in


@pytest.mark.slow  # a worker process
def test_user_function_runs_with_meta(user_module):
    with RewardRunner(f"{user_module}:length", timeout_s=10) as runner:
        assert runner.score("p", ["ab", "abcd"], "x", {"bonus": 0.5}) == [2.5, 4.5]
        assert runner.errors == {"exception": 0, "timeout": 0, "bad_value": 0}


@pytest.mark.slow  # a worker process
def test_raising_and_bad_values_cost_the_response_only(user_module):
    with RewardRunner(f"{user_module}:picky", timeout_s=10) as runner:
        assert runner.score("p", ["ok", "raise", "nan", "text", "ok"], "x") == [1.0, 0.0, 0.0, 0.0, 1.0]
        assert runner.errors == {"exception": 1, "timeout": 0, "bad_value": 2}
        assert "RuntimeError: boom" in runner.score_groups([("p", ["raise"], "x", {})])[0].last_error


@pytest.mark.slow  # a worker process
def test_hanging_function_is_killed_and_the_worker_restarted(user_module):
    with RewardRunner(f"{user_module}:picky", timeout_s=1.0) as runner:
        assert runner.score("p", ["hang", "ok"], "x") == [0.0, 1.0]
        assert runner.errors["timeout"] == 1 and "no result within 1 s" in runner.last_error
        assert runner.score("p", ["ok"], "x") == [1.0]  # the hung worker was replaced


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "neither a built-in"),
        ("no_such_module_xyz:fn", "cannot import module"),
        ("math:no_such_fn", "no callable 'no_such_fn'"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        RewardRunner(spec)


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner("exact", timeout_s=0)


@pytest.mark.slow  # a worker process
def test_dead_worker_is_replaced(user_module):
    with RewardRunner(f"{user_module}:dies", timeout_s=10, workers=1) as runner:
        assert runner.score("p", ["die", "ok"], "x") == [0.0, 1.0]
        assert runner.errors["exception"] == 1 and "worker died" in runner.last_error


def test_weighted_functions_sum_and_report_each(user_module):
    specs = [RewardSpec("exact", 1.0), RewardSpec(f"{user_module}:length", 0.5, name="Len")]
    with RewardRunner(specs, workers=0) as runner:
        assert runner.names == ["exact", "len"]
        score = runner.score_groups([("p", ["ab", "x"], "x", {})])[0]
    assert score.rewards == [0.5 * 2, 1.0 + 0.5 * 1]
    assert score.by_fn == {"exact": [0.0, 1.0], "len": [2.0, 1.0]}
    figures = score.figures()
    assert figures["reward_pos:exact"] == 1.0 and figures["reward_pos:len"] == 3.0 and figures["reward_n:len"] == 2
    assert figures["reward_failed"] == 0 and "reward_neg:len" not in figures


def test_workers_must_not_be_negative():
    with pytest.raises(ValueError, match="workers"):
        RewardRunner("exact", workers=-1)


def test_figures_travel_in_a_group_the_learner_accepts():
    """The figures ride in RolloutGroup.timings: their keys must be protocol ids, or every group is rejected."""
    import numpy as np

    from gspo_async.protocol.codec import decode, encode
    from gspo_async.protocol.messages import Limits, Response, RolloutGroup
    from gspo_async.tasks.conventions import bind

    def cs(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": -1.0 if solution_str == "bb" else 0.5, "Len Chars": float(len(solution_str))}

    runner = RewardRunner("exact", workers=0)
    runner.functions += [(bind(cs, "cs", "m:cs"), 1.0)]
    figures = runner.score_groups([("p", ["a", "bb"], "a", {})])[0].figures()
    assert figures["reward_pos:cs:len_chars"] == 3.0 and figures["reward_n:cs:len_chars"] == 2
    assert figures["reward_pos:cs"] == 0.5 and figures["reward_neg:cs"] == 1.0  # values sent are never negative
    responses = [Response(np.array([5], np.int32), np.array([-0.5], np.float32), 1.0, "stop",
                          np.array([[0, 0, 1]], np.int32)) for _ in range(2)]
    group = RolloutGroup("g:1", 1, "a0", np.array([1, 2], np.int32), responses, {"gen_s": 0.1, **figures})
    back = decode(encode(group), limits=Limits(vocab_size=10, max_prompt_tokens=4, max_response_tokens=4,
                                                 group_size=2))
    assert back.timings == group.timings


def test_capped_figures_leave_out_whole_series():
    from gspo_async.tasks.scoring import GroupScore

    score = GroupScore([0.0, 1.0], by_fn={"a": [0.0, 1.0], "b": [-1.0, 2.0]}, extras={"a:k": [3.0, 4.0]})
    assert set(score.figures(max_items=5)) == {"reward_failed", "reward_n:a", "reward_pos:a"}  # b needs 3 more
    assert score.figures()["reward_neg:b"] == 1.0 and score.figures()["reward_pos:a:k"] == 7.0
