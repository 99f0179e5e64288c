"""The task section's reward, prompt and chat settings reach the runner and the encoder as written."""

import json

import pytest

from gspo_async.config import ConfigError, load_config
from gspo_async.tasks import reward_runner_from_config, reward_specs_from_config, task_from_config
from gspo_async.tasks.scoring import RewardSpec


def cfg(*overrides):
    return load_config("configs/quickstart.yaml", list(overrides))


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("true", True), ("false", False)])
def test_chat_template_takes_auto_true_false(text, value):
    assert cfg(f"task.chat_template={text}").task.chat_template == value


def test_chat_template_default_is_auto_and_other_words_are_refused():
    assert cfg().task.chat_template == "auto"
    with pytest.raises(ConfigError, match="chat_template"):
        cfg("task.chat_template=sometimes")


def test_rewards_list_becomes_weighted_specs_and_excludes_reward():
    c = cfg("task.rewards=[{fn: exact, weight: 2, name: acc}, {fn: math, weight: 0.5}]")
    assert reward_specs_from_config(c.task, task_from_config(c.task)) == [RewardSpec("exact", 2.0, "acc"),
                                                                          RewardSpec("math", 0.5)]
    with pytest.raises(ConfigError, match="both set"):
        cfg("task.reward=math", "task.rewards=[{fn: exact}]")


def test_default_reward_is_the_tasks_own_checker(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"q": f"{i}?", "a": str(i)}) + "\n" for i in range(10)))
    c = cfg("task.name=jsonl", f"task.path={f}", "task.prompt_key=q", "task.answer_key=a", "task.eval_size=2",
            "task.options={reward: math}", "task.prompt_template='Q: {q}'")
    task = task_from_config(c.task)
    assert task.eval_items()[0].prompt.startswith("Q: ")
    runner = reward_runner_from_config(c.task, task)
    assert runner.names == ["math"] and runner.answer_key == "a" and runner.data_source == "jsonl"


def test_prompt_template_on_a_generated_task_is_an_error():
    c = cfg("task.prompt_template='{x}'")
    with pytest.raises(ValueError, match="prompt_template applies to the jsonl and hf tasks"):
        task_from_config(c.task)
