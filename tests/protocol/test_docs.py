"""docs/protocol.md and the schemas in validate.py name the same messages, fields and error codes."""

from pathlib import Path

from gspo_async.protocol.messages import ACK_STATUSES, ERROR_CODES, FINISH_REASONS, TO_ACTOR, TO_LEARNER
from gspo_async.protocol.validate import LIMITS, PROMPT_LEASE, RESPONSE, SCHEMAS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def test_every_message_and_field_is_documented():
    assert set(SCHEMAS) == set(TO_LEARNER) | set(TO_ACTOR)
    for name, struct in SCHEMAS.items():
        assert f"`{name}`" in DOC, name
        for field in struct.fields:
            assert f"`{field}`" in DOC, f"{name}.{field}"
    for struct in (LIMITS, PROMPT_LEASE, RESPONSE):
        for field in struct.fields:
            assert f"`{field}`" in DOC, field


def test_every_error_code_and_enumeration_is_documented():
    for code in ERROR_CODES:
        assert f"| `{code}` |" in DOC, code
    for word in (*ACK_STATUSES, *FINISH_REASONS, "admission", "exhausted"):
        assert f"`{word}`" in DOC, word
