import pytest

from gspo_async.engines.base import SamplingSettings
from gspo_async.engines.hf import HFEngine
from gspo_async.tasks.scoring import RewardRunner
from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.evaluate import evaluate


@pytest.fixture(scope="module")
def engine(tiny_cache):
    # the same cached build as tests/engines/test_hf.py: any briefly warmed-up model serves here
    return HFEngine(tiny_cache(warmup_steps=150, warmup_target_accuracy=None), seed=0)


def test_accuracy_counts_greedy_answers_against_hand_scored_ones(engine):
    items = [PromptItem(i, f"{i}+{i}=", str(2 * i)) for i in range(10)]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    texts = [
        engine.tokenizer.decode(g[0].tokens, skip_special_tokens=True)
        for g in engine.generate([engine.tokenizer(it.prompt)["input_ids"] for it in items], 1, greedy)
    ]
    # score with a reward that accepts exactly what the model said for the even items: accuracy must be 5/10
    answers = [t if i % 2 == 0 else t + "x" for i, t in enumerate(texts)]
    scored = [PromptItem(it.index, it.prompt, a) for it, a in zip(items, answers)]
    result = evaluate(engine, engine.tokenizer, scored, RewardRunner("exact").score, greedy, batch_size=3)
    assert result["accuracy"] == 0.5 and result["pass_at_n"] == 0.5


def test_pass_at_n_is_at_least_accuracy(engine):
    items = [PromptItem(i, f"{i}+1=", str(i + 1)) for i in range(8)]
    r = evaluate(engine, engine.tokenizer, items, RewardRunner("exact").score, SamplingSettings(max_new_tokens=4), n=4)
    assert 0.0 <= r["accuracy"] <= r["pass_at_n"] <= 1.0
    assert 1.0 <= r["mean_length"] <= 4.0
