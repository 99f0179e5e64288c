"""`gspo-async preflight CONFIG`: see what the model will see and what the reward will say, before a long run.

Loads the tokenizer and model of the config, checks every reward function on real items (as the learner does
before step 1), shows three prompts exactly as the model will see them (template applied, special tokens
visible, token counts), generates a group for each with the configured sampling, scores it, and prints a table:
response, reward per function, length, truncated or not. Then the eval split size and the warnings: prompts over
`prompt_length`, most responses truncated at `response_length`, all rewards equal, a tokenizer without pad or EOS,
reward errors. Exit status 1 on any error (a reward that fails, a config or data problem), else 0.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

log = logging.getLogger(__name__)


@dataclass
class PreflightReport:
    """What preflight found: rows of the table, warnings, errors (any error means exit status 1)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    eval_size: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def _short(text: str, width: int) -> str:
    text = repr(text)[1:-1]  # newlines and tabs visible, one row per response
    return text if len(text) <= width else text[: width - 3] + "..."


def run_preflight(cfg: Any, out: TextIO = sys.stdout, n_prompts: int = 3) -> PreflightReport:
    """Run the checks of the module docstring on `cfg` (a loaded Config), printing to `out`."""
    import torch

    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import HFEngine
    from gspo_async.bootstrap import ensure_model
    from gspo_async.models.loading import load_model_and_tokenizer
    from gspo_async.tasks import reward_runner_from_config, task_from_config
    from gspo_async.tasks.prompting import PromptEncoder
    from gspo_async.tasks.reward_checks import RewardCheckError, check_rewards

    t0 = time.monotonic()
    report = PreflightReport()

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    model_dir = ensure_model(cfg)
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=getattr(torch, cfg.model.dtype))
    say(f"model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
        f"vocab {len(tokenizer)}")
    if tokenizer.eos_token_id is None:
        report.warnings.append("the tokenizer has no EOS token: responses can only end at response_length")
    if tokenizer.pad_token_id is None:
        report.warnings.append("the tokenizer has no pad token: the learner pads with id 0; set one (e.g. the EOS)")
    task = task_from_config(cfg.task)
    encoder = PromptEncoder.from_task_config(tokenizer, cfg.task)
    evals = task.eval_items()
    report.eval_size = len(evals)
    items = evals[:n_prompts]
    if len(items) < n_prompts:  # a task without an eval split: show training items
        stream = task.train_items(cfg.seed)
        items += [next(stream) for _ in range(n_prompts - len(items))]
    say(f"task {cfg.task.name}: eval split {len(evals)} items; chat template "
        f"{'applied' if encoder.uses_template else 'not applied'} (task.chat_template: {cfg.task.chat_template})")

    with reward_runner_from_config(cfg.task, task) as runner:
        def as_reward_prompt(prompt: Any) -> str:
            return tokenizer.decode(encoder(prompt), skip_special_tokens=True)

        try:
            for line in check_rewards(runner, evals or items, render=as_reward_prompt):
                say(f"reward {line}")
        except RewardCheckError as err:
            report.errors.append(str(err))
            say(f"ERROR: {err}")
            report.seconds = time.monotonic() - t0
            return report

        engine = HFEngine((model, tokenizer), seed=cfg.seed)
        sampling = SamplingSettings(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                    top_k=cfg.sampling.top_k, max_new_tokens=cfg.response_length)
        G = cfg.num_return_sequences_in_group
        prompt_ids = [encoder(it.prompt) for it in items]
        groups = engine.generate(prompt_ids, G, sampling)
        jobs = [(tokenizer.decode(ids, skip_special_tokens=True),
                 [tokenizer.decode(g.tokens, skip_special_tokens=True) for g in group], it.answer, it.meta)
                for it, ids, group in zip(items, prompt_ids, groups)]
        scores = runner.score_groups(jobs)
        names = runner.names
        for k, (it, ids, group, score, job) in enumerate(zip(items, prompt_ids, groups, scores, jobs)):
            say()
            say(f"--- prompt {k + 1} (item {it.index}, {len(ids)} tokens, answer {it.answer!r}) as the model sees it:")
            say(tokenizer.decode(ids, skip_special_tokens=False))
            if len(ids) > cfg.prompt_length:
                report.warnings.append(f"prompt of item {it.index} has {len(ids)} tokens, over prompt_length "
                                       f"{cfg.prompt_length}: the learner refuses it")
            header = f"  {'response':<40} " + " ".join(f"{n[:12]:>12}" for n in names) + "  reward  length  truncated"
            say(header)
            for i, (g, text) in enumerate(zip(group, job[1])):
                values = [score.by_fn[n][i] for n in names]
                cells = " ".join(f"{'n/a' if v is None else f'{v:.3f}':>12}" for v in values)
                truncated = g.finish_reason == "length"
                say(f"  {_short(text, 40):<40} {cells}  {score.rewards[i]:6.3f}  {len(g.tokens):6d}  "
                    f"{'yes' if truncated else 'no'}")
                report.rows.append({"item": it.index, "answer": it.answer, "response": text,
                                    "by_fn": dict(zip(names, values)),
                                    "reward": score.rewards[i], "length": len(g.tokens), "truncated": truncated})
            if score.errors:
                report.errors.append(f"reward errors on item {it.index}: {dict(score.errors)}; last: "
                                     f"{score.last_error}")
        rows = report.rows
        if rows and sum(r["truncated"] for r in rows) > len(rows) / 2:
            report.warnings.append(f"{sum(r['truncated'] for r in rows)} of {len(rows)} responses were cut at "
                                   f"response_length {cfg.response_length}: raise it or ask for shorter answers")
        if rows and all(max(s.rewards) == min(s.rewards) for s in scores):
            report.warnings.append(f"every group's rewards are equal ({sorted({r['reward'] for r in rows})}): grpo "
                                   "gets no learning signal from such groups; check the reward against these "
                                   "responses")
    say()
    say(f"eval split: {report.eval_size} items")
    for w in report.warnings:
        say(f"WARNING: {w}")
    for e in report.errors:
        say(f"ERROR: {e}")
    report.seconds = time.monotonic() - t0
    say(f"preflight {'passed' if report.ok else 'FAILED'} in {report.seconds:.1f}s")
    return report


def main(cfg: Any) -> int:
    """The CLI entry: 0 when preflight found no error, 1 otherwise (config, data or reward problems included)."""
    try:
        report = run_preflight(cfg)
    except (ValueError, TypeError, ImportError, OSError) as err:  # bad data file, model path, task options
        print(f"ERROR: {type(err).__name__}: {err}", flush=True)
        return 1
    return 0 if report.ok else 1
