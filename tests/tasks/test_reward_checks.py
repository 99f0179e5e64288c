"""A broken reward stops the run loudly: the check before step 1, the error limit and the constant-reward warning."""

import textwrap
from types import SimpleNamespace

import pytest

from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.reward_checks import RewardCheckError, RewardMonitor, check_rewards
from gspo_async.tasks.scoring import RewardRunner, RewardSpec

ITEMS = [PromptItem(7, "3+4=", "7", {"level": 1}), PromptItem(8, "1+1=", "2", {"level": 2})]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "check_rewards_mod.py").write_text(textwrap.dedent("""
        def good(prompt, completion, answer):
            return float(completion == answer)

        def typo(prompt, completion, answer):
            return float(completion == answr)

        def text(prompt, response, answer):
            return "yes"
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "check_rewards_mod"


@pytest.mark.slow  # through the worker pool, as the learner checks
def test_a_working_function_passes_and_reports_its_convention(user_module):
    with RewardRunner([RewardSpec("exact"), RewardSpec(f"{user_module}:good")], timeout_s=10) as runner:
        lines = check_rewards(runner, ITEMS)
    assert lines[1].startswith("good (check_rewards_mod:good): per response") and lines[1].endswith("[1.0, 1.0]")


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_an_exception_names_function_signature_convention_call_and_last_line(user_module, workers):
    with RewardRunner(f"{user_module}:typo", workers=workers) as runner, pytest.raises(RewardCheckError) as err:
        check_rewards(runner, ITEMS)
    text = str(err.value)
    assert "reward function 'typo' (check_rewards_mod:typo)" in text
    assert "signature:  typo(prompt, completion, answer)" in text
    assert "convention: per response" in text
    assert "call tried: typo(prompt='3+4=', completion='7', answer='7')" in text
    assert "NameError: name 'answr' is not defined" in text and "check_rewards_mod.py:6" in text


def test_a_value_that_is_not_a_number_stops_too(user_module):
    with RewardRunner(f"{user_module}:text", workers=0) as runner, pytest.raises(RewardCheckError, match="bad_value"):
        check_rewards(runner, ITEMS)


def group(rewards, failed=0, errors=None, figures=None, finish="stop"):
    timings = {"gen_s": 0.1, "reward_failed": float(failed), **{f"reward_errors:{k}": float(v)
                                                                 for k, v in (errors or {}).items()}}
    timings.update(figures or {})
    return SimpleNamespace(responses=[SimpleNamespace(reward=r, finish_reason=finish) for r in rewards],
                           timings=timings)


def test_monitor_aggregates_function_means_weighted_by_applicable_counts():
    m = RewardMonitor()
    metrics = m.observe([group([1, 0], figures={"reward_n:acc": 2, "reward_pos:acc": 1.0, "reward_n:fmt": 1,
                                                "reward_pos:fmt": 0.0, "reward_neg:fmt": 1.0,
                                                "reward_n:acc:len": 2, "reward_pos:acc:len": 6.0}),
                         group([1, 1], figures={"reward_n:acc": 2, "reward_pos:acc": 2.0, "reward_n:fmt": 0,
                                                "reward_pos:fmt": 0.0, "reward_n:acc:len": 1,
                                                "reward_pos:acc:len": 5.0})])
    assert metrics["reward/acc/mean"] == (1.0 + 2.0) / 4
    assert metrics["reward/fmt/mean"] == -1.0  # negative, and the group where fmt applied to nothing is left out
    assert metrics["reward/acc/len"] == 11.0 / 3
    assert metrics["reward/errors/exception"] == 0 and metrics["reward/error_frac"] == 0


def test_error_limit_needs_a_full_window_then_stops_above_the_share():
    m = RewardMonitor(error_limit=0.25, window=4, constant_steps=0)
    assert m.progress_suffix() == ""  # the progress line says nothing while no call failed
    m.observe([group([0, 1, 0, 1], failed=4, errors={"exception": 4})])  # one bad group, window not full
    assert not m.over_limit()
    assert m.progress_suffix() == " | reward errors exception 4 (100.0% recent)"
    m.observe([group([0, 1, 0, 1]), group([0, 1, 0, 1])])
    assert not m.over_limit()  # 3 groups seen of a window of 4
    metrics = m.observe([group([0, 1, 0, 1])])
    assert metrics["reward/error_frac"] == 4 / 16 and not m.over_limit()  # exactly at the limit is allowed
    m.observe([group([0, 1, 0, 1], failed=1, errors={"timeout": 1})])  # the first bad group left the window
    assert m.error_frac() == 1 / 16 and not m.over_limit()
    m.observe([group([0, 1, 0, 1], failed=4, errors={"exception": 4})] * 2)
    assert m.error_frac() == 9 / 16 and m.over_limit()
    message = m.stop_message("acc: exception: KeyError: 'x'")
    assert "56.2% of the responses of the last 4 groups" in message and "exception 12, timeout 1" in message
    assert message.endswith("Last error: acc: exception: KeyError: 'x'")


def test_constant_rewards_in_every_group_of_the_first_steps_warn_once():
    m = RewardMonitor(constant_steps=2)
    m.observe([group([0, 0]), group([1, 1])])
    assert m.warning is None and m.take_warning() is None
    m.observe([group([0, 0], finish="length")])
    warning = m.take_warning()
    assert "first 2 steps had identical rewards" in warning and "100% of the last batch were truncated" in warning
    assert m.take_warning() is None  # once
    m.observe([group([0, 0])])
    assert m.take_warning() is None


def test_one_informative_group_means_no_warning():
    m = RewardMonitor(constant_steps=2)
    m.observe([group([0, 0]), group([0, 1])])
    m.observe([group([0, 0])])
    assert m.warning is None


def test_every_monitor_metric_is_a_registered_name():
    from gspo_async.telemetry.names import lookup, prometheus_name

    m = RewardMonitor()
    metrics = m.observe([group([1, 0], failed=1, errors={"timeout": 1},
                               figures={"reward_n:acc": 2, "reward_pos:acc": 1.0, "reward_n:acc:len": 2,
                                        "reward_pos:acc:len": 4.0})])
    assert set(metrics) == {"reward/acc/mean", "reward/acc/len", "reward/errors/exception", "reward/errors/timeout",
                            "reward/errors/bad_value", "reward/error_frac"}
    for name in metrics:
        lookup(name)  # raises for a name the registry would refuse
    assert prometheus_name("reward/acc/mean") == "gspo_reward_acc_mean"
    with pytest.raises(ValueError, match="unknown metric name"):
        lookup("reward/errors/other")
