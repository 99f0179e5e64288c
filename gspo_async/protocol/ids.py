"""The one rule for ids and names, shared by the wire protocol, the coordinator and telemetry.

An id (actor id, group id, instance, engine, session, the keys of stats / timings / capabilities maps) is 1 or more
of the characters ``A-Z a-z 0-9 _ . : @ -``: safe in a log line, a file name, a metric name and a Prometheus
label. An actor id is at most `MAX_ACTOR_ID_CHARS` characters: it names a metrics file and a metric series. Other
ids are bounded by the learner's `limits.max_string_bytes`. When the learner renames an actor because another live
process holds its id, the new id (``<id>-2``, ...) obeys the same rule: the base is shortened to make room.
"""

from __future__ import annotations

import re
from typing import Any, Optional

ID_CHARS = "A-Za-z0-9_.:@-"
ID_RE = re.compile(f"[{ID_CHARS}]+")
MAX_ACTOR_ID_CHARS = 128


def id_problem(value: Any, max_chars: Optional[int] = None) -> Optional[str]:
    """Why `value` is not a valid id of at most `max_chars` characters, or None when it is one."""
    if type(value) is not str:
        return f"expected a str id, got {type(value).__name__}"
    if not value:
        return "an id must not be empty"
    if max_chars is not None and len(value) > max_chars:
        return f"an id of {len(value)} characters is longer than {max_chars}"
    if not ID_RE.fullmatch(value):
        return f"an id may only use the characters {ID_CHARS} (letters, digits and _.:@-)"
    return None


def is_id(value: Any, max_chars: Optional[int] = None) -> bool:
    return id_problem(value, max_chars) is None


def check_actor_id(value: Any) -> str:
    """`value` if it is a valid actor id; ValueError naming the rule otherwise."""
    problem = id_problem(value, MAX_ACTOR_ID_CHARS)
    if problem is not None:
        raise ValueError(f"actor id {str(value)[:40]!r}: {problem}; at most {MAX_ACTOR_ID_CHARS} characters of "
                         f"{ID_CHARS}")
    return value


def suffixed(base: str, k: int, max_chars: int = MAX_ACTOR_ID_CHARS) -> str:
    """``<base>-<k>`` shortened at the end of `base` so that the whole stays within `max_chars` characters."""
    tail = f"-{k}"
    return base[: max(1, max_chars - len(tail))] + tail
