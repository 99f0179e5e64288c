import importlib.util
import json
import sys

import pytest

from gspo_async.tasks import get_task

HAVE_DATASETS = importlib.util.find_spec("datasets") is not None


def test_missing_datasets_package_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: `import datasets` raises ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        get_task("hf", path=str(tmp_path))


@pytest.mark.skipif(not HAVE_DATASETS, reason="needs the optional `datasets` package")
def test_loads_local_json_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(20)))
    task = get_task("hf", path="json", data_files=str(f), prompt_key="question", eval_size=4, reward="math")
    assert len(task.eval_items()) == 4 and task.eval_items()[0].answer.startswith("####")


@pytest.mark.skipif(not HAVE_DATASETS, reason="needs the optional `datasets` package")
def test_unavailable_dataset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load split 'train'"):
        get_task("hf", path="no-such-owner/no-such-dataset")


@pytest.mark.skipif(not HAVE_DATASETS, reason="needs the optional `datasets` package")
def test_chat_rows_from_a_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": f"{i}+1?"}], "answer": str(i + 1)})
                         + "\n" for i in range(10)))
    task = get_task("hf", path="json", data_files=str(f), eval_size=2)
    item = task.eval_items()[0]
    assert item.prompt[0] == {"role": "system", "content": "be brief"} and item.prompt[1]["role"] == "user"
    assert int(item.answer) == int(item.prompt[1]["content"].split("+")[0]) + 1
