"""Hypothesis strategies for protocol messages, generated from the message declarations (messages.py).

`message(cls, limits)` walks the declared wire fields of `cls` and draws each from its spec (Int, Float, Id, Array,
...): well-formed shapes, every field of the right msgpack type, with adversarial values: range boundaries and
values just outside them, extreme floats (1e308, subnormals, -0.0, NaN and infinities where a float is declared),
ids at and beyond their length bound, unicode strings, reused ids and prompt ids from small pools. A message
drawn here is always encodable; whether the learner accepts it is for the learner to say (with an error code).

A new field or a changed range in messages.py changes what is drawn here with no edit: nothing in this module
names a message field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from gspo_async.protocol import fields as F
from gspo_async.protocol.ids import ID_CHARS
from gspo_async.protocol.messages import Limits

EXTREME_FLOATS = [0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, 3.4028235e38, 3.5e38, -3.5e38, 1e308, -1e308,
                  math.inf, -math.inf, math.nan]
UNICODE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
ID_POOL = ["a0", "legit", "x", "g-1", "g:2", "a.b@c", "-", "Z" * 128]  # reused on purpose


def ident(bound: int) -> st.SearchStrategy[str]:
    """Ids: from a small pool (reuse), valid ones up to the bound, one character over it, and invalid ones."""
    return st.one_of(
        st.sampled_from(ID_POOL),
        st.from_regex(f"[{ID_CHARS}]{{1,{min(bound, 40)}}}", fullmatch=True),
        st.sampled_from(["a" * bound, "b" * (bound + 1), "a!b", "a b", "é", "", "a/b"]),
        UNICODE)


def _int(spec: F.Int) -> st.SearchStrategy[int]:
    hi = min(spec.hi, 2**63 - 1)
    return st.one_of(st.integers(spec.lo, min(hi, spec.lo + 64)), st.sampled_from([spec.lo, hi]),
                     st.integers(spec.lo, hi), st.sampled_from([spec.lo - 1, -1, 2**31, 2**63 - 1]))


def _float(spec: F.Float) -> st.SearchStrategy[float]:
    lo, hi = max(spec.lo, -1e300), min(spec.hi, 1e300)
    return st.one_of(st.floats(lo, hi), st.sampled_from([spec.lo, spec.hi]), st.sampled_from(EXTREME_FLOATS))


def _array(spec: F.Array, limits: Limits) -> st.SearchStrategy[np.ndarray]:
    n_max = spec.max_len(limits) if spec.max_len is not None else 64
    if spec.width == 3:  # version spans: mostly valid rows (version 0, covering 0..n), sometimes odd ones
        def spans(n: int, version: int) -> np.ndarray:
            return np.array([[version, 0, n]], np.int32)
        return st.one_of(st.builds(spans, st.integers(1, 8), st.sampled_from([0, 0, 1, 2**31 - 1])),
                         st.lists(st.integers(-2, 10), max_size=9).map(lambda v: np.array(v, np.int32)))
    n = st.one_of(st.integers(1, 8), st.sampled_from([0, n_max, n_max + 1]))
    if spec.dtype.kind == "f":
        return n.flatmap(lambda k: st.lists(st.one_of(st.floats(-20.0, 0.0), st.sampled_from(EXTREME_FLOATS)),
                                            min_size=k, max_size=k)).map(_f32)
    token = st.one_of(st.integers(0, limits.vocab_size - 1),
                      st.sampled_from([-1, limits.vocab_size, 2**31 - 1, -2**31]))
    return n.flatmap(lambda k: st.lists(token, min_size=k, max_size=k)).map(lambda v: np.array(v, np.int32))


def _f32(values: list[float]) -> np.ndarray:
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float32, on purpose
        return np.array(values, np.float32)


def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.sampled_from(EXTREME_FLOATS),
                     st.floats(), UNICODE)


def spec_strategy(spec: F.Spec, limits: Limits) -> st.SearchStrategy[Any]:
    """Values for one declared spec (see the module docstring)."""
    if isinstance(spec, F.Int):
        return _int(spec)
    if isinstance(spec, F.Float):
        return _float(spec)
    if isinstance(spec, F.Id):
        return ident(spec.bound(limits))
    if isinstance(spec, F.Str):
        if spec.choices is not None:
            return st.one_of(st.sampled_from(list(spec.choices)), UNICODE)
        return st.one_of(UNICODE, st.just("x" * (limits.max_string_bytes + 1)))
    if isinstance(spec, F.Bool):
        return st.booleans()
    if isinstance(spec, F.Array):
        return _array(spec, limits)
    if isinstance(spec, F.Scalars):
        return st.dictionaries(ident(limits.max_string_bytes), _scalar(), max_size=limits.max_items + 1)
    if isinstance(spec, F.FloatMap):
        return st.dictionaries(ident(limits.max_string_bytes), _float(spec.item), max_size=4)
    if isinstance(spec, F.Free):
        leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), UNICODE,
                         st.binary(max_size=8))
        return st.dictionaries(UNICODE, st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
            UNICODE, c, max_size=3), max_leaves=8), max_size=4)
    if isinstance(spec, F.BytesMap):
        return st.dictionaries(UNICODE, st.binary(max_size=16), max_size=3)
    if isinstance(spec, F.ListOf):
        limit = spec.max_len(limits) if spec.max_len is not None else 4
        item = spec_strategy(spec.item, limits)
        exact = st.lists(item, min_size=limit, max_size=limit) if limit <= 16 else st.nothing()
        return st.one_of(exact, st.lists(item, max_size=min(limit + 1, 6)))
    if isinstance(spec, F.HostPort):
        return st.one_of(st.none(), st.tuples(UNICODE, st.integers(0, 65535)))
    if isinstance(spec, F.Struct):
        return message(spec.cls, limits)
    raise TypeError(f"no strategy for spec {type(spec).__name__}; add one here")


def message(cls: type, limits: Limits) -> st.SearchStrategy[Any]:
    """Instances of message class `cls`: each declared field drawn from its spec; optional ones sometimes left at
    their default."""
    parts = {}
    for f in F.wire_fields(cls):
        value = spec_strategy(f.spec, limits)
        parts[f.name] = st.one_of(st.just(f.default()), value) if f.optional else value
    return st.fixed_dictionaries(parts).map(lambda kw: _build(cls, kw))


def _build(cls: type, kwargs: dict[str, Any]) -> Any:
    obj = object.__new__(cls)  # no __post_init__: a Limits out of range is the receiver's to refuse
    for k, v in kwargs.items():
        object.__setattr__(obj, k, v)
    return obj
