"""The figure tools' common step: replace the generated part of a document, between its two marker lines."""

from __future__ import annotations


def rewrite(doc: str, begin: str, end: str, text: str, name: str) -> str:
    """`doc` with what lies between the `begin` and `end` markers replaced by `text` (the markers stay); `name`, the
    document, is named in the error when the markers are missing or repeated."""
    if doc.count(begin) != 1 or doc.count(end) != 1:
        raise ValueError(f"{name} needs exactly one pair of markers {begin} ... {end}: put them where the generated "
                         "text belongs")
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{text}{end}{tail}"
