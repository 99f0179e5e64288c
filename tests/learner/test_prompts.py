"""The prompt source: item shapes, numbering, encoding, errors, and the saveable cursor."""

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from gspo_async.learner.prompts import Prompt, PromptSource


@dataclass(frozen=True)
class TextItem:
    index: int
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


def text_stream(seed=0):
    for i in itertools.count():
        yield TextItem(1000 + (i * 7 + seed) % 50, f"q{i}", str(i), {"i": i})


def test_items_as_tuples_dicts_and_objects_get_increasing_ids():
    src = PromptSource([(5, [1, 2], "a"), {"index": 6, "tokens": np.array([3]), "answer": "b", "meta": {"x": 1}},
                        TextItem(7, "hi", "c")], encode=lambda text: [ord(ch) for ch in text])
    prompts = [src.next() for _ in range(3)]
    assert [p.prompt_id for p in prompts] == [0, 1, 2] and [p.index for p in prompts] == [5, 6, 7]
    assert prompts[2].tokens.tolist() == [104, 105] and prompts[2].tokens.dtype == np.int32
    assert prompts[1].meta == {"x": 1} and prompts[0].meta == {}
    assert src.next() is None and src.exhausted and src.next_prompt_id == 3


def test_bad_items_give_clear_errors():
    with pytest.raises(ValueError, match="encode"):
        PromptSource([TextItem(0, "text", "a")]).next()
    with pytest.raises(ValueError, match="non-empty"):
        PromptSource([(0, [], "a")]).next()
    with pytest.raises(ValueError, match=r"\[0, 2\^31\)"):
        PromptSource([(0, [-1], "a")]).next()
    with pytest.raises(TypeError, match="answer must be a str"):
        PromptSource([(0, [1], 3)]).next()
    with pytest.raises(TypeError, match="JSON"):
        PromptSource([(0, [1], "a", {"x": object()})]).next()
    with pytest.raises(ValueError, match="lacks"):
        PromptSource([{"index": 0, "answer": "a"}]).next()


def test_cursor_restores_on_a_fresh_stream():
    src = PromptSource(text_stream(), encode=lambda t: [len(t)])
    drawn = [src.next() for _ in range(7)]
    state = src.state_dict()
    again = PromptSource(text_stream(), encode=lambda t: [len(t)])
    again.load_state_dict(state)
    nxt, ref = again.next(), src.next()
    assert nxt.prompt_id == ref.prompt_id == 7 and nxt.index == ref.index and nxt.answer == ref.answer
    assert drawn[-1].prompt_id == 6
    other = PromptSource(text_stream(seed=3), encode=lambda t: [len(t)])
    with pytest.raises(ValueError, match="seed changed"):
        other.load_state_dict(state)
    short = PromptSource([(0, [1], "a")])
    with pytest.raises(ValueError, match="ended after 1"):
        short.load_state_dict(state)
    with pytest.raises(ValueError, match="fresh"):
        src.load_state_dict(state)


def test_prompt_dict_round_trip():
    p = Prompt(3, 9, np.array([1, 2], np.int32), "x", {"k": [1, 2]})
    q = Prompt.from_dict(p.to_dict())
    assert (q.prompt_id, q.index, q.tokens.tolist(), q.answer, q.meta) == (3, 9, [1, 2], "x", {"k": [1, 2]})
