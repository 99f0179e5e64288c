"""Field checks of the wire protocol, declared as metadata of the message dataclasses.

A message field is declared once, in `messages.py`, with :func:`wire`::

    n: int = wire(Int(0, 2**31 - 1))                      # required on the wire
    wait_s: float = wire(Float(0.0, 3600.0), 0.0)         # optional, default 0.0
    returned: list[int] = wire(ListOf(Int(), lambda L: L.max_lease_prompts), factory=list)

The spec object (Int, Float, Str, Id, Array, ...) reads one decoded msgpack value, checks it and returns the Python
value; :class:`Struct` reads a whole map into the dataclass from its fields' specs and defaults. Validation
(`validate.read_message`), the docs-consistency test and the property-based fuzz strategies are all derived from
these declarations, so a field, its range and its default are written in one place.

Nothing read here is trusted: a wrong type, a huge length or a dangling frame reference becomes a
:class:`ProtocolError` with a code from `messages.ERROR_CODES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Optional, Sequence

import msgpack
import numpy as np

from gspo_async.protocol.ids import MAX_ACTOR_ID_CHARS, id_problem

Limits = Any  # messages.Limits (messages.py imports this module, so the type is named, not imported)

MAX_DEPTH = 16  # nesting of free-form maps (meta, config)
INT64_MAX = 2**63 - 1
# Largest finite float32: every float that the learner turns into a float32 tensor (rewards, timings) must fit.
FLOAT32_MAX = float(np.finfo(np.float32).max)
UNBOUNDED_STR = 4096  # string bound when no limits are in force (an actor reading the learner's replies)


class ProtocolError(ValueError):
    """A message that breaks the protocol. `code` is one of ERROR_CODES; `ref` names the group when known."""

    def __init__(self, code: str, message: str, ref: str = "", msg_type: str = "", rid: int = 0):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.ref, self.msg_type, self.rid = code, message, ref, msg_type, rid


@dataclass
class Context:
    """Where a message came from: extra frames (index 1.. in the message) and the limits in force."""

    limits: Optional[Limits]
    frames: Sequence[Any] = ()
    used: set[int] = field(default_factory=set)
    msg_type: str = ""
    ref: str = ""
    rid: int = 0

    def fail(self, code: str, message: str) -> NoReturn:
        raise ProtocolError(code, message, ref=self.ref, msg_type=self.msg_type, rid=self.rid)

    def limit(self, get: Optional[Callable[[Limits], int]]) -> Optional[int]:
        return get(self.limits) if (get is not None and self.limits is not None) else None


# ------------------------------------------------------------------------------------------------------------
# Declaring a field
# ------------------------------------------------------------------------------------------------------------

def wire(spec: "Spec", default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
         required: bool = False) -> Any:
    """A dataclass field read and checked on the wire by `spec`.

    default / factory: the value when the key is left out of the message (then the key is optional on the wire).
    required: the key must be on the wire even though the Python constructor has a default (Limits).
    """
    meta = {"spec": spec, "required": required}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    if default is not dataclasses.MISSING:
        return field(default=default, metadata=meta)
    return field(metadata=meta)


@dataclass(frozen=True)
class WireField:
    """One declared field: its name, spec and whether the wire may leave it out (then `default()` fills it)."""

    name: str
    spec: "Spec"
    optional: bool
    dc_field: Any

    def default(self) -> Any:
        f = self.dc_field
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def wire_fields(cls: type) -> list[WireField]:
    """The declared wire fields of message class `cls`, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        if "spec" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire spec: declare it with wire(...)")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        out.append(WireField(f.name, f.metadata["spec"], has_default and not f.metadata["required"], f))
    return out


# ------------------------------------------------------------------------------------------------------------
# Field specs: each reads one msgpack value, checks it and returns the Python value
# ------------------------------------------------------------------------------------------------------------

class Spec:
    wire = "?"  # name of the msgpack type, for error messages and docs

    def read(self, value: Any, ctx: Context, path: str) -> Any:
        raise NotImplementedError

    def wrong(self, value: Any, ctx: Context, path: str) -> NoReturn:
        ctx.fail("bad_field", f"{path}: expected {self.wire}, got {type(value).__name__}")


class Int(Spec):
    wire = "int"

    def __init__(self, lo: int = 0, hi: int = INT64_MAX):
        self.lo, self.hi = lo, hi

    def read(self, value, ctx, path):
        if type(value) is not int:  # bool is an int subclass in Python, but not an int on the wire
            self.wrong(value, ctx, path)
        if not self.lo <= value <= self.hi:
            ctx.fail("bad_field", f"{path}={value} is outside [{self.lo}, {self.hi}]")
        return value


class Float(Spec):
    """A finite float in [lo, hi]; f32: it must also fit a float32 (it becomes one in a tensor). Non-finite values
    are refused with `code` (bad_number for rewards and timings), out-of-range ones with `range_code`."""

    wire = "float"

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, code: str = "bad_field", f32: bool = False,
                 range_code: str = "bad_field"):
        if f32:
            lo, hi = max(lo, -FLOAT32_MAX), min(hi, FLOAT32_MAX)
        self.lo, self.hi, self.code, self.f32, self.range_code = lo, hi, code, f32, range_code

    def read(self, value, ctx, path):
        if type(value) not in (float, int):
            self.wrong(value, ctx, path)
        value = float(value)
        if not math.isfinite(value):
            ctx.fail(self.code, f"{path}={value} is not finite")
        if not self.lo <= value <= self.hi:
            ctx.fail(self.range_code, f"{path}={value} is outside [{self.lo}, {self.hi}]")
        return value


class Str(Spec):
    wire = "str"

    def __init__(self, choices: Optional[Sequence[str]] = None, max_bytes: Optional[int] = None):
        self.choices, self.max_bytes = choices, max_bytes

    def read(self, value, ctx, path):
        if type(value) is not str:
            self.wrong(value, ctx, path)
        limit = self.max_bytes or (ctx.limits.max_string_bytes if ctx.limits else UNBOUNDED_STR)
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            ctx.fail("bad_field", f"{path} is longer than {limit} bytes")
        if self.choices is not None and value not in self.choices:
            ctx.fail("bad_field", f"{path}={value[:40]!r} is not one of {list(self.choices)}")
        return value


class Id(Spec):
    """An id (protocol/ids.py): letters, digits and _.:@-; at most `max_chars` characters (actor ids:
    MAX_ACTOR_ID_CHARS), else at most limits.max_string_bytes."""

    wire = "id"

    def __init__(self, max_chars: Optional[int] = None):
        self.max_chars = max_chars

    def bound(self, limits: Optional[Limits]) -> int:
        if self.max_chars is not None:
            return self.max_chars
        return limits.max_string_bytes if limits else UNBOUNDED_STR

    def read(self, value, ctx, path):
        if type(value) is not str:
            self.wrong(value, ctx, path)
        problem = id_problem(value, self.bound(ctx.limits))
        if problem is not None:
            ctx.fail("bad_field", f"{path}: {problem}")
        return value


ActorId = lambda: Id(MAX_ACTOR_ID_CHARS)  # noqa: E731 - a named spec, read like a class in the declarations


class Bool(Spec):
    wire = "bool"

    def read(self, value, ctx, path):
        if type(value) is not bool:
            self.wrong(value, ctx, path)
        return value


class Array(Spec):
    """A raw little-endian array: a bin field, or an int k naming frame k of the message (header = frame 0)."""

    def __init__(self, dtype: str, max_len: Optional[Callable[[Limits], int]] = None, width: int = 1):
        self.dtype = np.dtype(dtype)
        self.native = self.dtype.newbyteorder("=")
        self.max_len, self.width = max_len, width  # width 3: (version, start, end) rows
        self.wire = f"bin ({'int32' if self.dtype.kind == 'i' else 'float32'} little-endian) or frame index"

    def read(self, value, ctx, path):
        if type(value) is bytes:
            buf, code, nbytes = value, "bad_field", len(value)
        elif type(value) is int:
            if not 1 <= value <= len(ctx.frames) or value in ctx.used:
                ctx.fail("bad_frames", f"{path} names frame {value}: missing or already used "
                                       f"({len(ctx.frames)} extra frames)")
            ctx.used.add(value)
            buf, code = _buffer(ctx.frames[value - 1]), "bad_frames"
            nbytes = memoryview(buf).nbytes
        else:
            self.wrong(value, ctx, path)
        n, partial = divmod(nbytes, 4)
        if partial:
            ctx.fail(code, f"{path}: {nbytes} bytes is not a whole number of 4-byte items")
        if self.max_len is not None and ctx.limits is not None and n > self.max_len(ctx.limits):
            ctx.fail("bad_field", f"{path} has {n} items, more than the limit {self.max_len(ctx.limits)}")
        if n % self.width:
            ctx.fail("bad_spans", f"{path}: {n} items is not a whole number of rows of {self.width}")
        # astype copies into a native, writable array that outlives the ZeroMQ frame
        arr = np.frombuffer(buf, dtype=self.dtype).astype(self.native)
        return arr.reshape(-1, self.width) if self.width > 1 else arr


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _check_items(value: dict, ctx: Context, path: str) -> None:
    limit = ctx.limits.max_items if ctx.limits else UNBOUNDED_STR
    if len(value) > limit:
        ctx.fail("bad_field", f"{path} has {len(value)} entries, more than the limit {limit}")


class Scalars(Spec):
    """A map of ids to int / float / str / bool / nil (statistics, capabilities); floats may be NaN."""

    wire = "map id -> int|float|str|bool|nil"

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_items(value, ctx, path)
        out = {}
        for k, v in value.items():
            Id().read(k, ctx, f"{path} key")
            if type(v) is str:
                Str().read(v, ctx, f"{path}.{k}")
            elif v is not None and type(v) not in (int, float, bool):
                ctx.fail("bad_field", f"{path}.{k}: expected a scalar, got {type(v).__name__}")
            out[k] = v
        return out


class FloatMap(Spec):
    """A map of ids to floats read by `item` (timings: finite seconds >= 0 that fit a float32)."""

    wire = "map id -> float"

    def __init__(self, item: Optional[Float] = None):
        self.item = item or Float(code="bad_number", f32=True)

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_items(value, ctx, path)
        return {Id().read(k, ctx, f"{path} key"): self.item.read(v, ctx, f"{path}.{k}") for k, v in value.items()}


class Free(Spec):
    """Free-form msgpack data (maps with str keys, arrays, scalars, bin), bounded in size and depth."""

    wire = "map (free-form)"

    def __init__(self, max_bytes: Optional[Callable[[Limits], int]] = None):
        self.max_bytes = max_bytes

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        _check_free(value, ctx, path, 0)
        limit = ctx.limit(self.max_bytes)
        if limit is not None and len(msgpack.packb(value, use_bin_type=True)) > limit:
            ctx.fail("bad_field", f"{path} is larger than {limit} bytes")
        return value


def _check_free(value: Any, ctx: Context, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        ctx.fail("bad_field", f"{path} is nested deeper than {MAX_DEPTH}")
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                ctx.fail("bad_field", f"{path}: map keys must be str")
            _check_free(v, ctx, f"{path}.{k}", depth + 1)
    elif type(value) is list:
        for i, v in enumerate(value):
            _check_free(v, ctx, f"{path}[{i}]", depth + 1)
    elif value is not None and type(value) not in (int, float, bool, str, bytes):
        ctx.fail("bad_field", f"{path}: {type(value).__name__} is not plain data")


class BytesMap(Spec):
    wire = "map str -> bin"

    def read(self, value, ctx, path):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        out = {}
        for k, v in value.items():
            Str().read(k, ctx, f"{path} key")
            if type(v) is not bytes:
                ctx.fail("bad_field", f"{path}.{k}: expected bin, got {type(v).__name__}")
            out[k] = v
        return out


class ListOf(Spec):
    def __init__(self, item: Spec, max_len: Optional[Callable[[Limits], int]] = None, code: str = "bad_field"):
        self.item, self.max_len, self.code = item, max_len, code
        self.wire = f"array of {item.wire}"

    def read(self, value, ctx, path):
        if type(value) is not list:
            self.wrong(value, ctx, path)
        limit = ctx.limit(self.max_len)
        if limit is not None and len(value) > limit:
            ctx.fail(self.code, f"{path} has {len(value)} items, more than the limit {limit}")
        return [self.item.read(v, ctx, f"{path}[{i}]") for i, v in enumerate(value)]


class HostPort(Spec):
    wire = "[str, int] or nil"

    def read(self, value, ctx, path):
        if value is None:
            return None
        if type(value) is not list or len(value) != 2:
            self.wrong(value, ctx, path)
        return Str().read(value[0], ctx, f"{path}[0]"), Int(0, 65535).read(value[1], ctx, f"{path}[1]")


class Struct(Spec):
    """A msgpack map with exactly the declared fields of dataclass `cls` (optional ones may be left out and then
    take the dataclass default); builds `cls`."""

    wire = "map"

    def __init__(self, cls: type):
        self.cls = cls
        self._fields: Optional[list[WireField]] = None
        self._names: frozenset[str] = frozenset()

    @property
    def fields(self) -> list[WireField]:
        if self._fields is None:  # lazily: a nested message class is complete only after its decorator ran
            self._fields = wire_fields(self.cls)
            self._names = frozenset(f.name for f in self._fields)
        return self._fields

    def read(self, value, ctx, path, skip: tuple[str, ...] = ()):
        if type(value) is not dict:
            self.wrong(value, ctx, path)
        fields_ = self.fields
        if not value.keys() <= self._names:
            unknown = [k for k in value if k not in self._names and k not in skip]
            if unknown:
                ctx.fail("bad_field", f"{path}: unknown field {str(unknown[0])[:40]!r}")
        kwargs = {}
        for f in fields_:
            if f.name in value:
                kwargs[f.name] = f.spec.read(value[f.name], ctx, path + "." + f.name if path else f.name)
            elif not f.optional:
                ctx.fail("bad_field", f"missing field {path + '.' + f.name if path else f.name}")
        try:
            return self.cls(**kwargs)
        except ValueError as err:  # the dataclass's own checks (Limits)
            ctx.fail("bad_field", f"{path or self.cls.__name__}: {err}")
