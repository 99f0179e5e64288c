import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gspo_async.models.loading import load_model_and_tokenizer
from gspo_async.bootstrap.tiny import TINY_META, build_tiny
from gspo_async.models.tiny import tiny_config



@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return build_tiny(out, warmup_steps=40, warmup_target_accuracy=None, num_threads=None)


def test_build_writes_hf_files_and_meta(built):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", TINY_META):
        assert (built / name).is_file(), name
    meta = json.loads((built / TINY_META).read_text())
    assert meta["task"] == "arithmetic" and meta["seed"] == 0 and meta["warmup_steps_done"] == 40
    assert 0.0 <= meta["greedy_accuracy"] <= 1.0 and 0.0 <= meta["pass_at_8"] <= 1.0
    assert json.loads((built / "config.json").read_text())["model_type"] == "llama"


def test_reloaded_model_matches_and_tokenizer_is_the_fast_class(built):
    model, tok = load_model_and_tokenizer(built)
    assert type(tok).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert tok.padding_side == "left" and len(tok) == model.config.vocab_size
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    again, _ = load_model_and_tokenizer(built)
    torch.testing.assert_close(model(input_ids=ids).logits, again(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_loads_and_generates_offline_in_a_fresh_process(built):
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
        torch.set_num_threads(1)
        tok = PreTrainedTokenizerFast.from_pretrained({str(built)!r})
        model = AutoModelForCausalLM.from_pretrained({str(built)!r})
        batch = tok(["1+2=", "40+41="], return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        print("OK", out.shape[0], out.shape[1] > batch["input_ids"].shape[1])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OK 2 True" in done.stdout


def test_same_settings_reuse_the_build_and_overwrite_rebuilds(built):
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert build_tiny(built, warmup_steps=40, warmup_target_accuracy=None, num_threads=None) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp


def test_warm_up_stops_at_the_target(tmp_path):
    out = build_tiny(tmp_path, warmup_steps=200, warmup_target_accuracy=0.0, num_threads=None)
    meta = json.loads((out / TINY_META).read_text())
    assert meta["warmup_steps_done"] == 10  # the first check already meets a target of 0


def test_config_rejects_odd_head_dims():
    with pytest.raises(ValueError, match="head_dim"):
        tiny_config(100, hidden_size=100, layers=1, heads=4, max_positions=32)


def test_builds_for_the_sort_task(tmp_path):
    out = build_tiny(tmp_path, task="sort", task_options={"length": 4}, warmup_steps=10, warmup_target_accuracy=None,
                     num_threads=None)  # fmt: skip
    meta = json.loads((out / TINY_META).read_text())
    assert meta["task"] == "sort" and meta["settings"]["task_options"] == {"length": 4}
