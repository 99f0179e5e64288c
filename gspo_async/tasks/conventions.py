"""Reward functions as users write them, bound by parameter name to one calling convention.

A reward function is bound once, when it is loaded, by reading its signature; the first rule that matches wins:

- ``batch``: a parameter named ``prompts`` or ``completions`` (the TRL style,
  ``fn(prompts, completions, **kwargs) -> list[float | None]``). Called once per group with lists: the
  prompts, the completions, and every dataset column as a keyword list (the answer under ``answer``,
  ``ground_truth``, ``reference`` and the dataset's own answer column name, plus each field of the record's meta).
  One value per completion; ``None`` means "not applicable to this sample".
- ``per-response``: every parameter without a default is one of the known names below, or the function takes
  ``**kwargs``. Called once per response with keywords: ``prompt``; ``response`` (aliases ``completion``,
  ``solution_str``); ``answer`` (aliases ``ground_truth``, ``reference``); ``meta`` (alias ``extra_info``);
  ``data_source``. ``**kwargs`` receives the record's other fields. verl's
  ``compute_score(data_source, solution_str, ground_truth, extra_info)`` is this convention (labelled ``verl``).
- ``positional``: three or four positional parameters with other names, called as
  ``fn(prompt, response, answer[, meta])`` (the shape of many libraries' reward helpers).

Anything else is refused when the function is loaded, with its signature and these rules.

Values: a real number (a bool counts as 0 / 1), or a dict with a numeric ``score`` whose other numeric keys are
reported as metrics of that function. NaN, infinities, strings and None (outside the batch convention) are
``bad_value`` errors.
"""

from __future__ import annotations

import importlib
import inspect
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROMPT_NAMES = ("prompt",)
RESPONSE_NAMES = ("response", "completion", "solution_str")
ANSWER_NAMES = ("answer", "ground_truth", "reference")
META_NAMES = ("meta", "extra_info")
SOURCE_NAMES = ("data_source",)
KNOWN_NAMES = PROMPT_NAMES + RESPONSE_NAMES + ANSWER_NAMES + META_NAMES + SOURCE_NAMES
BATCH_NAMES = ("prompts", "completions")

CONVENTIONS = {
    "batch": "batch (TRL style): fn(prompts, completions, **columns) -> list[float | None], once per group",
    "per-response": "per response, arguments bound by parameter name",
    "verl": "verl compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict",
    "positional": "positional: fn(prompt, response, answer[, meta]), once per response",
}
ERROR_KINDS = ("exception", "timeout", "bad_value")


class RewardBindError(ValueError):
    """A reward function whose signature fits no convention (the message names it and the rules)."""


def load_function(spec: str, builtins: dict[str, Callable[..., Any]] | None = None) -> Callable[..., Any]:
    """A built-in name or 'package.module:function' imported from the Python path."""
    if builtins and spec in builtins:
        return builtins[spec]
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        names = ", ".join(builtins or {})
        raise ValueError(f"reward {spec!r} is neither a built-in ({names}) nor 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from e
    fn = module
    for part in fn_name.split("."):  # 'module:Class.method' works too
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no callable {fn_name!r}")
    return fn


def describe_signature(fn: Callable[..., Any]) -> str:
    """'name(a, b, c=1, **kwargs)' (the name and signature users recognise), or the repr when there is none."""
    try:
        return f"{getattr(fn, '__name__', type(fn).__name__)}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return repr(fn)


@dataclass(frozen=True)
class BoundReward:
    """A reward function and how to call it.

    name: the metric name (``reward/<name>/mean``); spec: what the user wrote; convention: a key of CONVENTIONS;
    keywords: for 'per-response' / 'verl', parameter name -> which value it receives ('prompt', 'response',
    'answer', 'meta', 'data_source'); positional: the number of positional arguments ('positional' only);
    var_kwargs: whether the function takes ``**kwargs``; accepted: for 'batch', the keyword names it accepts.
    """

    name: str
    spec: str
    fn: Callable[..., Any] = field(repr=False)
    convention: str
    signature: str
    keywords: dict[str, str] = field(default_factory=dict)
    positional: int = 0
    var_kwargs: bool = False
    accepted: frozenset[str] = frozenset()

    @property
    def per_group(self) -> bool:
        """Whether one call scores a whole group (batch convention) rather than one response."""
        return self.convention == "batch"

    def calls(self, prompt: str, responses: list[str], answer: str, meta: dict[str, Any], data_source: str = "",
              answer_key: str = "answer") -> list[tuple[tuple, dict[str, Any]]]:
        """The (args, kwargs) of each call that scores this group: one per response, or one for a batch."""
        if self.per_group:
            n = len(responses)
            columns: dict[str, Any] = {k: [v] * n for k, v in meta.items()}
            for alias in (*ANSWER_NAMES, answer_key):
                columns[alias] = [answer] * n
            columns["data_source"] = [data_source] * n
            kwargs = {"prompts": [prompt] * n, "completions": list(responses), **columns}
            if not self.var_kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k in self.accepted}
            return [((), kwargs)]
        out = []
        for response in responses:
            values = {"prompt": prompt, "response": response, "answer": answer, "meta": meta,
                      "data_source": data_source}
            if self.convention == "positional":
                out.append(((prompt, response, answer, meta)[: self.positional], {}))
                continue
            kwargs = {param: values[role] for param, role in self.keywords.items()}
            if self.var_kwargs:
                kwargs.update({k: v for k, v in meta.items() if k not in kwargs and k not in KNOWN_NAMES})
            out.append(((), kwargs))
        return out

    def describe_call(self, args: tuple, kwargs: dict[str, Any]) -> str:
        """The call as Python source, values shortened: ``reward('12+3=', '15', '15')``."""
        def short(v: Any) -> str:
            text = repr(v)
            return text if len(text) <= 60 else text[:57] + "..."

        parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
        return f"{getattr(self.fn, '__name__', self.name)}({', '.join(parts)})"


def _role(param: str) -> str | None:
    for role, names in (("prompt", PROMPT_NAMES), ("response", RESPONSE_NAMES), ("answer", ANSWER_NAMES),
                        ("meta", META_NAMES), ("data_source", SOURCE_NAMES)):
        if param in names:
            return role
    return None


def bind(fn: Callable[..., Any], name: str, spec: str) -> BoundReward:
    """Bind `fn` to a convention by its parameter names (module docstring); RewardBindError when none fits."""
    signature = describe_signature(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins / C functions without a signature: the classic positional four
        return BoundReward(name, spec, fn, "positional", signature, positional=4)
    var_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    var_args = any(p.kind is p.VAR_POSITIONAL for p in params)
    named = [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    names = {p.name for p in named}
    required = [p for p in named if p.default is p.empty]
    if names & set(BATCH_NAMES):
        missing = [p.name for p in required if p.name not in BATCH_NAMES and _role(p.name) is None]
        if missing and not var_kwargs:
            raise RewardBindError(_refusal(name, spec, signature, f"batch function with required parameters "
                                           f"{missing} that no dataset column fills"))
        return BoundReward(name, spec, fn, "batch", signature, var_kwargs=var_kwargs, accepted=frozenset(names))
    keyword_ok = [p for p in named if p.kind is not p.POSITIONAL_ONLY]
    if required and all(_role(p.name) is not None and p in keyword_ok for p in required):
        keywords = {p.name: _role(p.name) for p in keyword_ok if _role(p.name) is not None}
        roles = list(keywords.values())
        if len(set(roles)) != len(roles):
            raise RewardBindError(_refusal(name, spec, signature, "two parameters are aliases of the same value "
                                           f"({', '.join(keywords)})"))
        convention = "verl" if "solution_str" in keywords else "per-response"
        return BoundReward(name, spec, fn, convention, signature, keywords=keywords, var_kwargs=var_kwargs)
    positional = [p for p in named if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    n_required = sum(1 for p in positional if p.default is p.empty)
    if n_required in (3, 4) or (var_args and n_required <= 4):
        count = 4 if var_args else min(len(positional), 4)  # meta too when the function has room for it
        return BoundReward(name, spec, fn, "positional", signature, positional=count)
    if not required and var_kwargs:  # fn(**kwargs): everything by keyword
        keywords = {"prompt": "prompt", "response": "response", "answer": "answer", "meta": "meta"}
        return BoundReward(name, spec, fn, "per-response", signature, keywords=keywords, var_kwargs=True)
    raise RewardBindError(_refusal(name, spec, signature, "its parameters match no convention"))


def _refusal(name: str, spec: str, signature: str, why: str) -> str:
    rules = "\n".join(f"  - {text}" for text in CONVENTIONS.values())
    return (f"reward function {name!r} ({spec}) with signature {signature}: {why}. The conventions are:\n{rules}\n"
            f"Per-response parameter names: {', '.join(KNOWN_NAMES)} (plus **kwargs for the record's other fields). "
            "See docs/tasks.md.")


# -- calling and judging values (runs in the worker process, or inline) ------------------------------------------


def as_number(value: Any) -> float | None:
    """value as a finite float (bools count as 0 / 1), or None when it is not a finite real number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


Outcome = tuple[float | None, dict[str, float], tuple[str, str] | None]
"""(score or None when not applicable, extra metrics, (error kind, message) or None) of one response."""


def judge(value: Any, allow_none: bool) -> Outcome:
    """One returned value as an Outcome: a number, a dict with 'score', or None where allowed."""
    if value is None and allow_none:
        return None, {}, None
    if isinstance(value, dict):
        if "score" not in value:
            return 0.0, {}, ("bad_value", f"returned a dict without 'score' (keys {sorted(value)[:8]})")
        score = as_number(value["score"])
        if score is None:
            return 0.0, {}, ("bad_value", f"returned score={value['score']!r:.80}, not a finite number")
        extras = {}
        for k, v in value.items():
            num = as_number(v) if k != "score" else None
            if num is not None:
                extras[str(k)] = num
        return score, extras, None
    score = as_number(value)
    if score is None:
        return 0.0, {}, ("bad_value", f"returned {value!r:.80} ({type(value).__name__}), not a finite number")
    return score, {}, None


def error_line(err: BaseException) -> str:
    """The traceback's last line, with where in the user's code it was raised: 'TypeError: ... (at f.py:3)'."""
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        where = frames[-1]
        last += f" (at {where.filename}:{where.lineno} in {where.name})"
    return last


def run_calls(fn: Callable[..., Any], per_group: bool, n: int, calls: list[tuple[tuple, dict]]) -> list[Outcome]:
    """Run a function's calls for one group and judge each value: n Outcomes (one per response).

    An exception in a call becomes an 'exception' Outcome with the traceback's last line; a batch result of the
    wrong length or type is a 'bad_value' for every response.
    """
    if per_group:
        (args, kwargs), = calls
        try:
            values = fn(*args, **kwargs)
        except Exception as e:  # the user's bug: reported, counted, never raised into the learner
            return [(0.0, {}, ("exception", error_line(e)))] * n
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or len(values) != n:
            got = f"{len(values)} values" if hasattr(values, "__len__") else repr(values)[:60]
            return [(0.0, {}, ("bad_value", f"a batch function must return a list of {n} values (one per "
                                            f"completion), got {got}"))] * n
        return [judge(v, allow_none=True) for v in list(values)]
    out: list[Outcome] = []
    for args, kwargs in calls:
        try:
            out.append(judge(fn(*args, **kwargs), allow_none=False))
        except Exception as e:
            out.append((0.0, {}, ("exception", error_line(e))))
    return out
