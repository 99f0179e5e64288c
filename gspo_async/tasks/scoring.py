"""Reward functions: built-in answer checkers, and user functions isolated in a worker process.

Built-ins (run inline, they cannot hang):
- 'exact': 1.0 when the response equals the answer after whitespace normalisation (ends stripped, inner runs of
  whitespace collapsed to one space), else 0.0.
- 'math': extracts the final answer of the response (the last \\boxed{...}, braces nested; else the text after
  the last '####'; else the last number) and of the reference (the same rules, else the whole reference), then
  compares numerically when both parse as numbers (1,000 == 1000, 0.5 == 1/2 == .5 == \\frac{1}{2}, -3 == -3.0),
  else as normalised strings.

User functions: 'package.module:function' with signature fn(prompt, response, answer, meta) -> float. They run in
a separate worker process, one call at a time with a time limit; an exception, a timeout or a value that is not a
finite real number scores 0.0 for that response and is counted in `RewardRunner.errors` ('exception', 'timeout',
'bad_value'). A timed-out worker is killed and a fresh one started. The caller never sees the failure.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

RewardFn = Callable[[str, str, str, dict], float]

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


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_final_answer(text: str) -> str | None:
    """The final answer in a solution text: last \\boxed{}, else after the last '####', else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0] if tail else ""
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _strip_latex(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right|!|,|;|:|\s)", "", s)
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%").replace("\\$", "")
    return s.strip().rstrip(".").strip()


def parse_number(s: str) -> Fraction | None:
    """Exact value of a plain number, a fraction a/b or \\frac{a}{b} (thousands commas and a trailing % or . are
    allowed and ignored); None otherwise."""
    s = _strip_latex(s).replace(" ", "")
    m = re.fullmatch(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}", s) or re.fullmatch(r"(-?)\\frac(\d)(\d)", s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        return -num / den if m.group(1) else num / den
    if "/" in s:
        num_s, _, den_s = s.partition("/")
        num, den = parse_number(num_s), parse_number(den_s)
        return None if num is None or den is None or den == 0 else num / den
    s = s.rstrip("%")
    if not re.fullmatch(r"[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?", s) or s in ("", "-", "+", "."):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def math_equal(response_answer: str, reference: str) -> bool:
    """Numeric equality when both sides parse as numbers, else equality of normalised strings."""
    a, b = parse_number(response_answer), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    got, want = _strip_latex(response_answer).replace(" ", ""), _strip_latex(reference).replace(" ", "")
    return got == want and want != ""


def math_answer(prompt: str, response: str, answer: str, meta: dict | None = None) -> float:
    """1.0 when the response's final answer equals the reference's (see module docstring), else 0.0."""
    got = extract_final_answer(response)
    if got is None:
        return 0.0
    ref = last_boxed(answer)
    if ref is None and "####" in answer:
        ref = answer.rsplit("####", 1)[1].strip()
    return float(math_equal(got, answer if ref is None else ref))


BUILTIN_REWARDS: dict[str, RewardFn] = {"exact": exact_match, "math": math_answer}


def load_reward_fn(spec: str) -> RewardFn:
    """A built-in name or 'module:function' imported from the Python path."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        raise ValueError(
            f"reward {spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no callable {fn_name!r}")
    return fn


def _as_reward(value: Any) -> float | None:
    """value as a finite float, or None when it is not a finite real number (bools and strings included)."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# -- user functions in a worker process ----------------------------------------------------------------------------


def _worker_main(spec: str, conn: Any) -> None:
    """Worker loop: load the function, then answer each (prompt, response, answer, meta) call with ('ok', reward),
    ('bad_value', repr) or ('exception', message)."""
    try:
        fn = load_reward_fn(spec)
    except Exception as e:  # the parent turns this into a clear ValueError
        conn.send(("load_error", str(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            call = conn.recv()
        except EOFError:
            return
        if call is None:
            return
        try:
            value = fn(*call)
            reward = _as_reward(value)  # judged here: the raw value may not even be picklable
            conn.send(("ok", reward) if reward is not None else ("bad_value", repr(value)[:200]))
        except Exception as e:
            conn.send(("exception", f"{type(e).__name__}: {e}"))


class RewardRunner:
    """Scores responses with a built-in checker (inline) or a user function (worker process, time-limited).

    timeout_s: per-response time limit for a user function (seconds).
    start_timeout_s: how long the worker may take to import the user's module.
    errors: counts of failed user calls by kind: 'exception', 'timeout', 'bad_value'.
    """

    def __init__(self, name_or_spec: str, timeout_s: float = 5.0, start_timeout_s: float = 60.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        self.spec = name_or_spec
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.errors = {"exception": 0, "timeout": 0, "bad_value": 0}
        self.last_error: str | None = None
        self._inline = BUILTIN_REWARDS.get(name_or_spec)
        self._proc: Any = None
        self._conn: Any = None
        if self._inline is None:
            if ":" not in name_or_spec:
                load_reward_fn(name_or_spec)  # a malformed spec fails here; the import itself runs in the worker
            self._start_worker()

    def _start_worker(self) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent may hold threads and torch state
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(self.spec, child), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout_s):
            self._kill_worker()
            raise ValueError(f"reward {self.spec!r}: worker did not start within {self.start_timeout_s} s")
        kind, message = parent.recv()
        if kind == "load_error":
            self._kill_worker()
            raise ValueError(message)

    def _kill_worker(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def _call_worker(self, prompt: str, response: str, answer: str, meta: dict) -> float:
        if self._proc is None or not self._proc.is_alive():
            self._kill_worker()
            self._start_worker()
        try:
            self._conn.send((prompt, response, answer, meta))
            ready = self._conn.poll(self.timeout_s)
        except (BrokenPipeError, EOFError, OSError):
            ready = False
        if not ready:
            alive = self._proc.is_alive()
            self._kill_worker()
            return self._fail("timeout" if alive else "exception", f"no result within {self.timeout_s} s")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):  # the worker died mid-call (e.g. os._exit, segfault)
            self._kill_worker()
            return self._fail("exception", "reward worker died")
        if kind != "ok":
            return self._fail(kind, value)
        return float(value)

    def _fail(self, kind: str, message: str) -> float:
        self.errors[kind] += 1
        self.last_error = f"{kind}: {message}"
        return 0.0

    def score(self, prompt: str, responses: list[str], answer: str, meta: dict | None = None) -> list[float]:
        """One reward per response (all sharing prompt, answer and meta)."""
        meta = meta or {}
        if self._inline is not None:
            return [float(self._inline(prompt, r, answer, meta)) for r in responses]
        return [self._call_worker(prompt, r, answer, meta) for r in responses]

    def close(self) -> None:
        """Stop the worker process, if any."""
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._kill_worker()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
