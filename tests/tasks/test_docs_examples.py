"""The reward examples of docs/tasks.md bind to the convention their section names and score a real group."""

import re
from pathlib import Path

import pytest

from gspo_async.tasks.conventions import bind
from gspo_async.tasks.scoring import RewardRunner

DOC = (Path(__file__).resolve().parents[2] / "docs" / "tasks.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)
EXPECTED = ["per-response", "positional", "verl", "batch"]


def test_each_convention_has_an_example():
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize("code, convention", list(zip(BLOCKS, EXPECTED)))
def test_example_binds_and_scores(code, convention):
    namespace: dict = {}
    exec(compile(code, "docs/tasks.md", "exec"), namespace)
    fns = [v for k, v in namespace.items() if callable(v) and getattr(v, "__module__", None) is None
           and not k.startswith("_") and not isinstance(v, type)]
    assert len(fns) == 1, list(namespace)
    bound = bind(fns[0], fns[0].__name__, "docs")
    assert bound.convention == convention
    runner = RewardRunner("exact", workers=0)
    runner.functions = [(bound, 1.0)]
    score = runner.score_groups([("What is 6 * 7?", ["<think>6*7</think> 42", "42"], "42", {"level": 2})])[0]
    assert not score.errors, score.last_error
    assert len(score.rewards) == 2
