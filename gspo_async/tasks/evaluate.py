"""Held-out evaluation: sample (or greedily decode) responses for task items and score them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gspo_async.engines.base import Engine, SamplingSettings
from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.prompting import encode_prompt

ScoreFn = Callable[[str, list[str], str, dict], list[float]]  # (prompt, responses, answer, meta) -> rewards


def evaluate(
    engine: Engine,
    tokenizer: Any,
    items: Sequence[PromptItem],
    score: ScoreFn | Any,
    sampling: SamplingSettings | None = None,
    n: int = 1,
    batch_size: int = 256,
    encode: Callable[[Any], list[int]] | None = None,
) -> dict[str, float]:
    """Score `n` responses per item. Default sampling is greedy with 16 new tokens.

    score: a ScoreFn, or a RewardRunner (then each chunk of items is scored in one parallel call).
    encode: prompt -> token ids, the learner's own `PromptEncoder` (so evaluation sees the prompts exactly as
    training does); default: the tokenizer's chat template when it has one. The reward function gets the prompt
    as the actors give it: the encoded prompt decoded without special tokens.

    Returns accuracy (mean reward over all responses, i.e. pass@1 for 0/1 rewards), pass_at_n (share of items with
    at least one reward >= 1) and mean_length (response tokens, EOS included).
    """
    sampling = sampling or SamplingSettings(temperature=0.0, max_new_tokens=16)
    total, solved, tokens, count = 0.0, 0, 0, 0
    per_batch = max(1, batch_size // n)
    for start in range(0, len(items), per_batch):
        chunk = items[start : start + per_batch]
        ids = [encode(it.prompt) if encode is not None else encode_prompt(tokenizer, it.prompt) for it in chunk]
        groups = engine.generate(ids, n, sampling)
        jobs = [(tokenizer.decode(prompt_ids, skip_special_tokens=True),
                 [tokenizer.decode(g.tokens, skip_special_tokens=True) for g in group], it.answer, it.meta)
                for it, prompt_ids, group in zip(chunk, ids, groups)]
        if hasattr(score, "score_groups"):  # a RewardRunner: the whole chunk in flight on its workers at once
            chunk_rewards = [s.rewards for s in score.score_groups(jobs)]
        else:
            chunk_rewards = [score(*job) for job in jobs]
        for group, rewards in zip(groups, chunk_rewards):
            total += sum(rewards)
            solved += int(max(rewards) >= 1.0)
            tokens += sum(len(g.tokens) for g in group)
            count += len(group)
    return {"accuracy": total / count, "pass_at_n": solved / len(items), "mean_length": tokens / count}


def evaluation_sampling(cfg: Any) -> SamplingSettings:
    """The sampling of held-out evaluation, on the learner and on the fleet alike: learner.eval_temperature
    (0 = greedy; else plain temperature sampling, top_p 1 and top_k 0), up to learner.eval_max_new_tokens
    (default response_length) new tokens."""
    return SamplingSettings(temperature=cfg.learner.eval_temperature, top_p=1.0, top_k=0,
                            max_new_tokens=cfg.learner.eval_max_new_tokens or cfg.response_length)
