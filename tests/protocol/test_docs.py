"""docs/protocol.md and the message declarations in messages.py name the same messages, fields, optionality and
error codes. Everything checked here is derived from the declarations (`fields.wire` metadata), so adding a field
without documenting it, or documenting an optional field as required, fails this test."""

import re
from pathlib import Path

import pytest

from gspo_async.protocol.messages import (
    ACK_STATUSES, ERROR_CODES, FINISH_REASONS, LEASE_REASONS, TO_ACTOR, TO_LEARNER, ActorStatus, Limits, PromptLease,
    Response)
from gspo_async.protocol.validate import SCHEMAS, Struct

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def section(heading: str) -> str:
    """The text from `heading` up to the next heading, or the next nested map's table (response, actor, prompt)."""
    start = DOC.index(heading)
    following = re.search(r"\n(#{2,3} |A response map:|An actor map:|A prompt map:)", DOC[start + len(heading):])
    return DOC[start: start + len(heading) + (following.start() if following else len(DOC))]


def table_rows(text: str) -> dict[str, str]:
    """{field: whole row} of the markdown tables in `text` whose first cell is a `code` name."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_0-9]+)` \|.*$", text, re.M)}


TABLES = {name: f"### `{name}`" for name in SCHEMAS} | {
    "response": "A response map:", "actor map": "An actor map:"}
NESTED = {"response": Struct(Response), "actor map": Struct(ActorStatus)}


def test_every_message_is_declared_and_documented():
    assert set(SCHEMAS) == set(TO_LEARNER) | set(TO_ACTOR)
    for name in SCHEMAS:
        assert f"### `{name}`" in DOC, name


@pytest.mark.parametrize("name", [n for n in SCHEMAS] + list(NESTED))
def test_fields_and_their_optionality_match_the_declaration(name):
    struct = NESTED.get(name) or SCHEMAS[name]
    text = section(TABLES[name])
    rows = table_rows(text)
    if rows:  # a table: exactly the declared fields, 'optional' exactly on the optional ones
        assert set(rows) == {f.name for f in struct.fields}, name
        for f in struct.fields:
            documented_optional = "optional" in rows[f.name]
            assert documented_optional == f.optional, f"{name}.{f.name}: optional on the wire is {f.optional}"
    else:  # a short message described in a sentence: every field named
        for f in struct.fields:
            assert f"`{f.name}`" in text, f"{name}.{f.name}"


def test_limits_and_prompt_maps_are_documented():
    limits = section("`limits` (all int >= 1")
    for f in Struct(Limits).fields:
        assert f"`{f.name}`" in limits and not f.optional, f.name
    prompt = section("A prompt map:")
    for f in Struct(PromptLease).fields:
        assert f"`{f.name}`" in prompt and not f.optional, f.name


def test_every_error_code_and_enumeration_is_documented():
    codes = section("## 7. Error codes")
    assert set(table_rows(codes)) == set(ERROR_CODES)
    for word in (*ACK_STATUSES, *FINISH_REASONS, *[r for r in LEASE_REASONS if r]):
        assert f"`{word}`" in DOC, word
