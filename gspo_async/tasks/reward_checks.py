"""Reward functions that fail must fail loudly: a check before training and a watch during it.

- `check_rewards`: before step 1, every reward function is called on real items (the first eval items, with the
  reference answer as the response) through the same workers training uses. An exception, a timeout or a value
  that is not a number raises :class:`RewardCheckError` naming the function, its signature, the convention it was
  bound to, the call tried and the traceback's last line.
- `RewardMonitor`: the learner feeds it every trained batch. It aggregates the figures the actors send with each
  group (`GroupScore.figures`) into metrics (`reward/<fn>/mean`, `reward/errors/<kind>`, `reward/error_frac`),
  decides when failed calls exceed ``task.reward_error_limit`` over the last ``task.reward_error_window`` groups,
  and warns once when every group of the first ``task.constant_reward_steps`` steps had identical rewards.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from gspo_async.tasks.base import PromptItem
from gspo_async.tasks.conventions import CONVENTIONS, ERROR_KINDS

log = logging.getLogger(__name__)


class RewardCheckError(RuntimeError):
    """A reward function failed on real items before training; the message says which, how and what to fix."""


def check_rewards(runner: Any, items: Sequence[PromptItem], render: Any = None, n_items: int = 2) -> list[str]:
    """Call every function of `runner` on the first `n_items` items, the reference answer as the response.

    render: prompt -> the prompt text the functions get in training (default: the item's prompt as is).
    Returns one line per function (name, convention, values seen); raises RewardCheckError on the first failure.
    """
    if not items:
        raise RewardCheckError("no items to check the reward functions on: the task has no eval or train items")
    chosen = list(items)[:n_items]
    lines = []
    for b, _ in runner.functions:
        seen = []
        for it in chosen:
            prompt = render(it.prompt) if render is not None else it.prompt
            prompt = prompt if isinstance(prompt, str) else str(prompt)
            score = runner.score_groups([(prompt, [it.answer], it.answer, dict(it.meta))], only=[b.name])[0]
            if score.errors:
                kind = next(iter(score.errors))
                source = str(it.meta.get("data_source", runner.data_source))
                args, kwargs = b.calls(prompt, [it.answer], it.answer, dict(it.meta), source,
                                       runner.answer_key)[0]
                message = (score.last_error or "").split(": ", 2)[-1]
                raise RewardCheckError(
                    f"reward function {b.name!r} ({b.spec}) failed before training on item {it.index}.\n"
                    f"  signature:  {b.signature}\n"
                    f"  convention: {CONVENTIONS[b.convention]}\n"
                    f"  call tried: {b.describe_call(args, kwargs)}\n"
                    f"  error ({kind}): {message}\n"
                    "Fix the function or rename its parameters (conventions: docs/tasks.md); "
                    "`gspo-async preflight CONFIG` runs this check in seconds.")
            seen.append(score.by_fn[b.name][0])
        lines.append(f"{b.name} ({b.spec}): {CONVENTIONS[b.convention]}; on the reference answers: {seen}")
    return lines


class RewardMonitor:
    """Reward figures of trained groups -> metrics, the error limit and the constant-reward warning.

    error_limit: the share of responses with a failed call (over the last `window` groups) above which the run
    stops; constant_steps: K of the once-only warning (0: off).
    """

    def __init__(self, error_limit: float = 0.05, window: int = 32, constant_steps: int = 5) -> None:
        self.error_limit = error_limit
        self.window: deque[tuple[int, int]] = deque(maxlen=window)  # (responses, failed) per group
        self.constant_steps = constant_steps
        self.errors: Counter[str] = Counter({k: 0 for k in ERROR_KINDS})
        self.steps = 0
        self.constant_so_far = True
        self.warned = False
        self.warning: str | None = None
        self._unread = False

    def observe(self, groups: Sequence[Any]) -> dict[str, float]:
        """Take one trained batch (RolloutGroups with `.timings` and `.responses`); return its reward metrics."""
        sums: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        all_constant = True
        truncated = total = 0
        for g in groups:
            t = dict(getattr(g, "timings", {}) or {})
            rewards = [float(r.reward) for r in g.responses]
            all_constant &= max(rewards) == min(rewards)
            total += len(rewards)
            truncated += sum(1 for r in g.responses if getattr(r, "finish_reason", "") == "length")
            self.window.append((len(rewards), int(t.get("reward_failed", 0))))
            for key, value in t.items():  # the keys of GroupScore.figures
                kind, _, name = key.partition(":")
                if kind == "reward_errors":
                    self.errors[name] += int(value)
                elif kind == "reward_n":
                    sums[name] += t.get(f"reward_pos:{name}", 0.0) - t.get(f"reward_neg:{name}", 0.0)
                    counts[name] += value
        self.steps += 1
        # a function's mean is reward/<fn>/mean; an extra key of its dicts is reward/<fn>/<key>
        metrics = {(f"reward/{name}/mean" if ":" not in name else "reward/" + name.replace(":", "/")):
                   sums[name] / counts[name] for name in counts if counts[name]}
        metrics.update({f"reward/errors/{kind}": float(n) for kind, n in self.errors.items()})
        metrics["reward/error_frac"] = self.error_frac()
        self._watch_constant(all_constant, groups, truncated / max(total, 1))
        return metrics

    def error_frac(self) -> float:
        """Share of responses with a failed reward call over the last window of groups."""
        responses = sum(n for n, _ in self.window)
        return sum(f for _, f in self.window) / responses if responses else 0.0

    def over_limit(self) -> bool:
        """Whether the run must stop: the window is full and its failed share exceeds the limit."""
        return len(self.window) == self.window.maxlen and self.error_frac() > self.error_limit

    def stop_message(self, last_error: str | None) -> str:
        """Why the run stops, with the last error an actor reported."""
        return (f"reward errors: {100 * self.error_frac():.1f}% of the responses of the last {len(self.window)} "
                f"groups failed to score (task.reward_error_limit {self.error_limit:g}); failed calls so far "
                f"{self.progress_text() or 'none'}. Last error: {last_error or 'not reported'}")

    def take_warning(self) -> str | None:
        """The constant-reward warning, returned once (then None)."""
        warning, self._unread = (self.warning if self._unread else None), False
        return warning

    def progress_suffix(self) -> str:
        """' | reward errors exception 3, timeout 1' for the progress line, or '' when no call failed."""
        text = self.progress_text()
        return f" | reward errors {text} ({100 * self.error_frac():.1f}% recent)" if text else ""

    def progress_text(self) -> str:
        """'exception 3, timeout 1' (failed calls by kind), or '' when there are none."""
        return ", ".join(f"{k} {n}" for k, n in self.errors.items() if n)

    def _watch_constant(self, all_constant: bool, groups: Sequence[Any], truncated_frac: float) -> None:
        self.constant_so_far &= all_constant
        if self.warned or not self.constant_steps or self.steps != self.constant_steps or not self.constant_so_far:
            return
        self.warned = self._unread = True
        values = sorted({float(r.reward) for g in groups for r in g.responses})[:4]
        self.warning = (
            f"every group of the first {self.constant_steps} steps had identical rewards (values {values}): zero "
            "learning signal under grpo. Likely causes: the reward function returns a constant (check how its "
            "parameters are bound: docs/tasks.md); responses never match the answer format (extraction, "
            f"whitespace, chat template); responses cut at response_length ({100 * truncated_frac:.0f}% of the "
            "last batch were truncated); or the task is too hard or too easy for the model (all 0 or all 1). "
            "`gspo-async preflight CONFIG` shows prompts, responses and rewards side by side.")
        # the caller logs it once, from take_warning (the learner, on its own log line)


def last_reward_error(actors: Sequence[dict[str, Any]]) -> str | None:
    """The last reward error the actors reported in their heartbeats (stats 'reward_last_error'), if any."""
    for a in actors:
        text = (a.get("stats") or {}).get("reward_last_error")
        if isinstance(text, str) and text:
            return f"{text} (reported by {a.get('actor_id', '?')})"
    return None


def scoring_for_run(task_cfg: Any, task: Any, tokenizer: Any) -> tuple[Any, Any, RewardMonitor]:
    """What the learner needs to score and watch a run, checked before step 1: (RewardRunner, PromptEncoder,
    RewardMonitor). Raises RewardCheckError (the runner closed) when a reward function fails on real items."""
    from gspo_async.tasks import reward_runner_from_config
    from gspo_async.tasks.prompting import PromptEncoder

    encoder = PromptEncoder.from_task_config(tokenizer, task_cfg)
    runner = reward_runner_from_config(task_cfg, task)
    items = task.eval_items()
    if not items:
        stream = task.train_items(0)
        items = [next(stream) for _ in range(2)]
    try:
        def as_actors_see_it(prompt: Any) -> str:
            return tokenizer.decode(encoder(prompt), skip_special_tokens=True)

        for line in check_rewards(runner, items, render=as_actors_see_it):
            log.info("reward check passed: %s", line)
    except BaseException:
        runner.close()
        raise
    monitor = RewardMonitor(task_cfg.reward_error_limit, task_cfg.reward_error_window, task_cfg.constant_reward_steps)
    return runner, encoder, monitor
