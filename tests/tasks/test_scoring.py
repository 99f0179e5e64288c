import textwrap
import time
from fractions import Fraction

import pytest

from gspo_async.tasks.scoring import (
    RewardRunner,
    exact_match,
    extract_final_answer,
    last_boxed,
    math_answer,
    parse_number,
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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", Fraction(1000)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        (r"\frac{1}{2}", Fraction(1, 2)),
        (r"\dfrac{3}{4}", Fraction(3, 4)),
        (r"-\frac{3}{6}", Fraction(-1, 2)),
        ("-3.0", Fraction(-3)),
        ("$42$", Fraction(42)),
        ("7.", Fraction(7)),
        ("1,00", None),
        ("x+1", None),
        ("1/0", None),
        ("", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_extract_final_answer_prefers_boxed_then_hashes_then_last_number():
    assert extract_final_answer(r"3 then \boxed{7} then 9") == "7"
    assert extract_final_answer("work 12 ... #### 1,234\n") == "1,234"
    assert extract_final_answer("it is 3 or maybe 5.") == "5"
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
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_builtin_runner_scores_inline():
    runner = RewardRunner("exact")
    assert runner.score("1+1=", ["2", " 2 ", "3"], "2") == [1.0, 1.0, 0.0]
    assert runner._proc is None


def test_user_function_runs_with_meta(user_module):
    with RewardRunner(f"{user_module}:length", timeout_s=10) as runner:
        assert runner.score("p", ["ab", "abcd"], "x", {"bonus": 0.5}) == [2.5, 4.5]
        assert runner.errors == {"exception": 0, "timeout": 0, "bad_value": 0}


def test_raising_and_bad_values_cost_the_response_only(user_module):
    with RewardRunner(f"{user_module}:picky", timeout_s=10) as runner:
        assert runner.score("p", ["ok", "raise", "nan", "text", "ok"], "x") == [1.0, 0.0, 0.0, 0.0, 1.0]
        assert runner.errors == {"exception": 1, "timeout": 0, "bad_value": 2}


def test_hanging_function_is_killed_and_the_worker_restarted(user_module):
    with RewardRunner(f"{user_module}:picky", timeout_s=1.0) as runner:
        t0 = time.monotonic()
        assert runner.score("p", ["hang", "ok"], "x") == [0.0, 1.0]
        assert time.monotonic() - t0 < 20
        assert runner.errors["timeout"] == 1
        assert runner.score("p", ["ok"], "x") == [1.0]


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
