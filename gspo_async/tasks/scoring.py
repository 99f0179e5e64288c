"""Reward scoring: built-in answer checkers, user functions in a pool of worker processes, weighted sums.

Built-ins ('exact' runs inline; 'math' runs on the workers like a user function, its sympy work is not free):
- 'exact': 1.0 when the response equals the answer after whitespace normalisation (ends stripped, inner runs of
  whitespace collapsed to one space), else 0.0.
- 'math': the final answer of the response (the last \\boxed{...}, braces nested; else the text after the last
  '####'; else what `math-verify` extracts from the whole text) against the reference's (the same rules, else the
  whole reference), compared by `math-verify`: equivalent expressions match (\\dfrac{\\sqrt{3}}{2} and
  \\frac{\\sqrt3}{2}, x=5 and 5, \\pi/2 and \\frac{\\pi}{2}, 1,000 and 1000, sets and intervals).

User functions: 'package.module:function', bound by parameter name to one of the conventions of
`gspo_async.tasks.conventions` (per response, verl's compute_score, TRL-style batch, positional). With
`workers` > 0 they run in a pool of that many worker processes (pebble), each call with a time limit; a hung
worker is killed and replaced, a dead one is replaced. A failed call (an exception, a timeout, a value that is not
a finite number) scores 0.0 for that function and is counted by kind in `RewardRunner.errors`, with the last
message in `RewardRunner.last_error`: the learner stops the run when too many fail (`task.reward_error_limit`)
and checks every function on real items before step 1 (`gspo_async.tasks.reward_checks`).

Several functions: the reward of a response is the weighted sum of the functions' values; a function that
returns None (batch convention: not applicable) adds nothing.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gspo_async.tasks.conventions import (
    ERROR_KINDS,
    BoundReward,
    Outcome,
    as_number,
    bind,
    load_function,
    run_calls,
)

log = logging.getLogger(__name__)

# -- built-in checkers -------------------------------------------------------------------------------------------


def normalise_whitespace(text: str) -> str:
    """Strip the ends and collapse every inner run of whitespace to one space."""
    return " ".join(text.split())


def exact_match(prompt: str, response: str, answer: str, meta: dict | None = None) -> float:
    """1.0 when response and answer are equal up to whitespace, else 0.0."""
    return float(normalise_whitespace(response) == normalise_whitespace(answer))


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, nested braces balanced; None if there is none
    or it is unclosed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def extract_final_answer(text: str) -> str | None:
    """The marked final answer in a solution text: the last \\boxed{}, else the line after the last '####';
    None when neither marker is there."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0] if tail else ""
    return None


def _parse_math(text: str, marked: bool) -> list:
    """math-verify's parse of `text`: a marked answer (boxed content, '####' tail, a bare reference) is read as
    one LaTeX expression; free text is searched for its final answer. Timeouts use SIGALRM, which only the main
    thread may set: elsewhere they are off (the worker pool bounds the call instead)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    if marked:
        configs = [LatexExtractionConfig(), ExprExtractionConfig()]
        text = f"${text.strip().strip('$')}$"
        found = parse(text, extraction_config=configs, parsing_timeout=timeout)
        if found:
            return found
    return parse(text, parsing_timeout=timeout)


def math_equal(got: str, reference: str) -> bool:
    """Whether two final answers are mathematically equivalent by math-verify (both read as LaTeX)."""
    from math_verify import verify

    gold, pred = _parse_math(reference, marked=True), _parse_math(got, marked=True)
    if not gold or not pred:
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold, pred, timeout_seconds=timeout))


def math_answer(prompt: str, response: str, answer: str, meta: dict | None = None) -> float:
    """1.0 when the response's final answer is equivalent to the reference's (see module docstring), else 0.0."""
    from math_verify import verify

    ref = extract_final_answer(answer)
    gold = _parse_math(answer if ref is None else ref, marked=True)
    got = extract_final_answer(response)
    pred = _parse_math(response if got is None else got, marked=got is not None)
    if not gold or not pred:
        return 0.0
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    return float(bool(verify(gold, pred, timeout_seconds=timeout)))


BUILTIN_REWARDS: dict[str, Callable[..., float]] = {"exact": exact_match, "math": math_answer}
RewardFn = Callable[..., Any]


def load_reward_fn(spec: str) -> RewardFn:
    """A built-in name or 'module:function' imported from the Python path."""
    return load_function(spec, BUILTIN_REWARDS)


# -- several functions, their weights and names --------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """One reward function of a run: fn is a built-in name or 'module:function'; name labels its metrics
    (default: the function's own name)."""

    fn: str
    weight: float = 1.0
    name: str | None = None


def _metric_name(text: str) -> str:
    """A name usable inside a metric name: lower case letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "reward"


def bind_specs(specs: Sequence[RewardSpec]) -> list[tuple[BoundReward, float]]:
    """Load and bind each function; names are made unique (a second 'reward' becomes 'reward_2')."""
    bound: list[tuple[BoundReward, float]] = []
    seen: Counter[str] = Counter()
    for s in specs:
        if not math.isfinite(s.weight):
            raise ValueError(f"reward {s.fn!r}: weight {s.weight} is not a finite number")
        fn = load_reward_fn(s.fn)
        base = _metric_name(s.name or (s.fn if s.fn in BUILTIN_REWARDS else getattr(fn, "__name__", s.fn)))
        if base == "errors":
            base = "errors_fn"  # 'reward/errors/<kind>' are the error counters
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        bound.append((bind(fn, name, s.fn), float(s.weight)))
    return bound


@dataclass
class GroupScore:
    """The scores of one group of responses.

    rewards: weighted sum per response; by_fn: each function's value per response (None: not applicable);
    extras: 'fn:key' -> values of the extra numeric keys a function's dict returned; errors: failed calls by kind;
    failed: responses with at least one failed call; last_error: the message of the last failure.
    """

    rewards: list[float]
    by_fn: dict[str, list[float | None]] = field(default_factory=dict)
    extras: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    failed: int = 0
    last_error: str | None = None

    def figures(self, max_items: int | None = None) -> dict[str, float]:
        """The group's reward figures as a flat map of protocol ids to numbers >= 0, sent in the group's
        `timings` map (whose values may not be negative) and summed by the learner: 'reward_failed' (responses with
        a failed call), 'reward_errors:<kind>' (failed calls), and for each function '<fn>' and each extra key
        '<fn>:<key>' of its dicts: 'reward_n:<x>' (values), 'reward_pos:<x>' and 'reward_neg:<x>' (the sums of the
        positive values and of the magnitudes of the negative ones; the mean is (pos - neg) / n).

        max_items: the most entries to return; whole series past it are left out (functions before dict keys)."""
        out: dict[str, float] = {"reward_failed": float(self.failed)}  # first: a capped map must keep it
        for kind, n in self.errors.items():
            out[f"reward_errors:{kind}"] = float(n)
        series = {fn: [v for v in values if v is not None] for fn, values in self.by_fn.items()}
        series.update(self.extras)
        for name, values in series.items():
            entry = {f"reward_n:{name}": float(len(values)), f"reward_pos:{name}": sum(v for v in values if v > 0)}
            negative = -sum(v for v in values if v < 0)
            if negative:
                entry[f"reward_neg:{name}"] = negative
            if max_items is not None and len(out) + len(entry) > max_items:
                break
            out.update(entry)
        return out


# -- the worker side -------------------------------------------------------------------------------------------------

_WORKER_FNS: dict[str, RewardFn] = {}


def _pool_job(spec: str, per_group: bool, n: int, calls: list[tuple[tuple, dict]]) -> list[Outcome]:
    """Runs in a pool worker: load the function once per worker, run the calls, judge the values there (the raw
    values may not even be picklable)."""
    fn = _WORKER_FNS.get(spec)
    if fn is None:
        fn = _WORKER_FNS[spec] = load_reward_fn(spec)
    return run_calls(fn, per_group, n, calls)


class RewardRunner:
    """Scores groups of responses with one or more reward functions.

    rewards: a built-in name or 'module:function', or a list of RewardSpec (weighted sum).
    timeout_s: time limit of one call of a user function in a worker (seconds; a batch call scores a group).
    workers: worker processes for user functions and 'math'; 0 runs them inline (no isolation, no time limit).
    'exact' always runs inline.
    answer_key: the dataset's answer column name (batch functions also get the answer under it).
    data_source: the `data_source` argument when the record has none (verl's convention), e.g. the task name.
    errors: failed calls by kind ('exception', 'timeout', 'bad_value') since the runner started.
    """

    def __init__(self, rewards: str | Sequence[RewardSpec], timeout_s: float = 5.0, workers: int = 1,
                 answer_key: str = "answer", data_source: str = "") -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        if workers < 0:
            raise ValueError(f"workers={workers} must be >= 0 (0 runs reward functions in this process)")
        specs = [RewardSpec(rewards)] if isinstance(rewards, str) else list(rewards)
        if not specs:
            raise ValueError("no reward function given: set task.reward or task.rewards")
        self.spec = rewards if isinstance(rewards, str) else ", ".join(s.fn for s in specs)
        self.functions = bind_specs(specs)
        self.timeout_s = timeout_s
        self.workers = workers
        self.answer_key = answer_key
        self.data_source = data_source
        self.errors: Counter[str] = Counter({k: 0 for k in ERROR_KINDS})
        self.last_error: str | None = None
        self._pool: Any = None
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """The functions' metric names, in order."""
        return [b.name for b, _ in self.functions]

    def _inline(self, b: BoundReward) -> bool:
        # 'exact' costs microseconds: a round trip to a worker would cost more. 'math' (sympy, ~5-10 ms a call)
        # goes to the pool like a user function.
        return self.workers == 0 or b.spec == "exact"

    def _get_pool(self) -> Any:
        if self._pool is None:
            from pebble import ProcessPool

            # spawn, not fork: the parent holds threads (ZeroMQ, torch) that a forked child would inherit broken
            self._pool = ProcessPool(max_workers=self.workers, context=mp.get_context("spawn"))
        return self._pool

    def score_groups(self, groups: Sequence[tuple[str, list[str], str, dict | None]],
                     only: Sequence[str] | None = None) -> list[GroupScore]:
        """Score many groups at once, every call of every group in flight together on the pool.

        groups: (prompt, responses, answer, meta) per group; only: the names of the functions to run (default
        all). Returns one GroupScore per group.
        """
        functions = [(b, w) for b, w in self.functions if only is None or b.name in only]
        with self._lock:
            return self._score_groups(groups, functions)

    def _score_groups(self, groups: Sequence[tuple[str, list[str], str, dict | None]],
                      functions: list[tuple[BoundReward, float]]) -> list[GroupScore]:
        pending: list[tuple[int, BoundReward, int, int, Any, str]] = []  # (group, fn, first, count, future, call)
        results: list[dict[str, list[Outcome]]] = [{} for _ in groups]
        for gi, (prompt, responses, answer, meta) in enumerate(groups):
            meta = dict(meta or {})
            source = str(meta.get("data_source", self.data_source))
            for b, _ in functions:
                calls = b.calls(prompt, list(responses), answer, meta, source, self.answer_key)
                results[gi][b.name] = [(0.0, {}, None)] * len(responses)
                if self._inline(b):
                    results[gi][b.name] = run_calls(b.fn, b.per_group, len(responses), calls)
                    continue
                chunks = [(0, calls, len(responses))] if b.per_group else [(i, [c], 1) for i, c in enumerate(calls)]
                for first, chunk, n in chunks:
                    future = self._schedule(b.spec, b.per_group, n, chunk)
                    pending.append((gi, b, first, n, future, b.describe_call(*chunk[0])))
        for gi, b, first, n, future, call in pending:
            outcomes = self._collect(future, call)
            if len(outcomes) != n:  # a timed-out or dead call: its one failure stands for every response it scored
                outcomes = [outcomes[0]] * n
            results[gi][b.name][first:first + n] = outcomes
        return [self._combine(res, len(g[1]), functions) for res, g in zip(results, groups)]

    def _schedule(self, spec: str, per_group: bool, n: int, chunk: list[tuple[tuple, dict]]) -> Any:
        try:
            return self._get_pool().schedule(_pool_job, args=(spec, per_group, n, chunk), timeout=self.timeout_s)
        except RuntimeError as err:  # the pool broke (its manager thread failed): start a fresh one, once
            log.warning("reward worker pool failed (%s); starting a new one", err)
            self.close()
            return self._get_pool().schedule(_pool_job, args=(spec, per_group, n, chunk), timeout=self.timeout_s)

    def _collect(self, future: Any, call: str) -> list[Outcome]:
        from pebble import ProcessExpired

        try:
            return future.result()
        except TimeoutError:
            return [(0.0, {}, ("timeout", f"{call} gave no result within {self.timeout_s:g} s; the worker was "
                                          "replaced"))]
        except ProcessExpired as e:
            return [(0.0, {}, ("exception", f"{call}: the reward worker died (exit code {e.exitcode}); it was "
                                            "replaced"))]
        except Exception as e:  # e.g. a result that cannot be pickled back
            return [(0.0, {}, ("exception", f"{call}: {type(e).__name__}: {e}"))]

    def _combine(self, by_fn: dict[str, list[Outcome]], n: int,
                 functions: list[tuple[BoundReward, float]]) -> GroupScore:
        score = GroupScore(rewards=[0.0] * n)
        failed = [False] * n
        for b, weight in functions:
            outcomes = by_fn[b.name]
            values: list[float | None] = []
            for i, (value, extras, error) in enumerate(outcomes):
                if error is not None:
                    kind, message = error
                    score.errors[kind] += 1
                    self.errors[kind] += 1
                    score.last_error = self.last_error = f"{b.name}: {kind}: {message}"
                    failed[i] = True
                values.append(value)
                if value is not None:
                    score.rewards[i] += weight * value
                for key, v in extras.items():
                    score.extras.setdefault(f"{b.name}:{_metric_name(key)}", []).append(v)
            score.by_fn[b.name] = values
        score.failed = sum(failed)
        if score.errors:
            log.debug("reward errors in a group: %s (last: %s)", dict(score.errors), score.last_error)
        return score

    def score(self, prompt: str, responses: list[str], answer: str, meta: dict | None = None) -> list[float]:
        """One reward per response (all sharing prompt, answer and meta): the weighted sum of the functions."""
        return self.score_groups([(prompt, responses, answer, meta)])[0].rewards

    def close(self) -> None:
        """Stop the worker processes, if any."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception as err:  # garbage collection cannot raise; say why the pool did not close cleanly
            log.debug("reward runner: closing its worker pool at garbage collection failed: %r", err)


__all__ = ["BUILTIN_REWARDS", "GroupScore", "RewardRunner", "RewardSpec", "as_number", "exact_match",
           "extract_final_answer", "last_boxed", "load_reward_fn", "math_answer", "math_equal"]
