import itertools
import json

import pytest

from gspo_async.tasks import get_task
from gspo_async.tasks.jsonl import read_jsonl


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_records_with_custom_keys_and_meta(tmp_path):
    f = write(tmp_path / "d.jsonl", [json.dumps({"q": f"what is {i}?", "a": i, "src": "x"}) for i in range(30)] + [""])
    task = get_task("jsonl", path=str(f), prompt_key="q", answer_key="a", eval_size=5, reward="math")
    assert task.reward_fn == "math"
    evals = task.eval_items()
    assert len(evals) == 5 and all(it.meta == {"src": "x"} for it in evals)
    train = list(itertools.islice(task.train_items(0), 25))
    assert {it.index for it in train}.isdisjoint(it.index for it in evals)
    assert {it.index for it in train} | {it.index for it in evals} == set(range(30))
    it = next(x for x in train + evals if x.index == 7)
    assert (it.prompt, it.answer) == ("what is 7?", "7")


def test_separate_eval_file_and_prompt_template(tmp_path):
    train = write(tmp_path / "t.jsonl", [json.dumps({"question": "1+1", "answer": "2"})] * 3)
    held = write(tmp_path / "e.jsonl", [json.dumps({"question": "2+2", "answer": "4"})])
    task = get_task("jsonl", path=train, eval_path=held, prompt_template="Q: {question}\nA:")
    assert [it.prompt for it in task.eval_items()] == ["Q: 2+2\nA:"]
    assert task.eval_items()[0].index == 3  # indices stay unique across files
    assert next(task.train_items()).prompt == "Q: 1+1\nA:"


def test_malformed_line_names_the_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "a", "answer": "b"}), "", '{"prompt": "c", "answer": '])
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: not valid JSON"):
        read_jsonl(f, "prompt", "answer")


def test_missing_field_names_the_field_and_line(tmp_path):
    f = write(tmp_path / "m.jsonl", [json.dumps({"prompt": "a", "answer": "b"}), json.dumps({"prompt": "c"})])
    with pytest.raises(ValueError, match=r"line 2: no field 'answer'"):
        read_jsonl(f, "prompt", "answer")


def test_non_object_and_missing_file(tmp_path):
    f = write(tmp_path / "l.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        read_jsonl(f, "prompt", "answer")
    with pytest.raises(ValueError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl", "prompt", "answer")


def test_chat_records_with_messages_and_the_answer_as_last_assistant_turn(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}],
             "level": i} for i in range(10)]
    rows.append({"messages": [{"role": "user", "content": "x?"}], "answer": "y", "level": 99})
    f = write(tmp_path / "chat.jsonl", [json.dumps(r) for r in rows])
    task = get_task("jsonl", path=str(f), eval_size=2)
    items = {it.index: it for it in task.eval_items() + list(itertools.islice(task.train_items(0), 9))}
    assert items[3].prompt == [{"role": "user", "content": "3+1?"}] and items[3].answer == "4"
    assert items[3].meta == {"level": 3}
    assert items[10].prompt == [{"role": "user", "content": "x?"}] and items[10].answer == "y"


def test_chat_record_with_a_bad_message_names_the_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", [json.dumps({"messages": [{"role": "user", "text": "hi"}], "answer": "1"})])
    with pytest.raises(ValueError, match=r"bad.jsonl line 1 field 'messages': message 0"):
        get_task("jsonl", path=str(f), eval_size=0)
