"""Atomic checkpoints: round trip, pruning, a save killed mid-write, and a full disk."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.learner.checkpoint import list_checkpoints, load_latest, load_trainer_state, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def model(hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg)


def save(root: Path, step: int, m: torch.nn.Module, keep: int = 2) -> Path:
    return save_checkpoint(root, step=step, version=step, model=m, tokenizer=None,
                           trainer_state={"engine": {"x": step}}, state={"coordinator": {"cursor": step}}, keep=keep)


def test_round_trip_and_keep_last_k(tmp_path):
    m = model()
    for step in (1, 2, 3):
        save(tmp_path, step, m)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    ckpt = load_latest(tmp_path)
    assert (ckpt.step, ckpt.version, ckpt.state["coordinator"]) == (3, 3, {"cursor": 3})
    assert load_trainer_state(ckpt)["engine"] == {"x": 3}
    back = AutoModelForCausalLM.from_pretrained(ckpt.path / "model")
    for (n, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_damaged_newest_checkpoint_is_skipped(tmp_path):
    m = model()
    save(tmp_path, 1, m)
    bad = save(tmp_path, 2, m)
    (bad / "state.json").write_text("{not json")
    assert load_latest(tmp_path).step == 1


@pytest.mark.slow
def test_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    save(tmp_path, 1, model())
    # A bigger model so the write takes long enough to be caught in the middle.
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from tests.learner.test_checkpoint import model, save
        from pathlib import Path
        save(Path({str(tmp_path)!r}), 2, model(hidden=768))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tmp-step-00000002-*")):  # poll for the temporary directory
        assert proc.poll() is None, "the save finished before it could be interrupted"
        assert time.monotonic() < deadline, "the save never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.step == 1
    AutoModelForCausalLM.from_pretrained(ckpt.path / "model")  # still loadable
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]


@pytest.mark.slow
def test_full_disk_raises_cleans_up_and_keeps_the_previous(tmp_path):
    save(tmp_path, 1, model())
    # A size-limited process stands in for a full disk: any write past 64 KiB fails with EFBIG (an OSError).
    script = textwrap.dedent(f"""
        import resource, signal, sys; sys.path.insert(0, {str(ROOT)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the OSError instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from tests.learner.test_checkpoint import model, save
        from pathlib import Path
        try:
            save(Path({str(tmp_path)!r}), 2, model(hidden=256))
        except OSError as err:
            print("OSError", err.errno)
            sys.exit(0)
        sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and "OSError" in out.stdout, out.stderr[-2000:]
    assert not list(tmp_path.glob(".tmp-*")), "the partial checkpoint was left behind"
    assert load_latest(tmp_path).step == 1


def test_resaving_a_step_whose_rename_fails_keeps_the_old_copy(tmp_path, monkeypatch):
    m = model()
    save(tmp_path, 5, m, keep=1)
    real_rename = os.rename

    def failing_rename(src, dst):  # the disk fails at the worst moment: the new copy cannot take the name
        if Path(src).name.startswith(".tmp-step-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        save(tmp_path, 5, m, keep=1)
    monkeypatch.undo()
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.path.name == "step-00000005"
    assert load_trainer_state(ckpt)["engine"] == {"x": 5}


def test_a_step_moved_aside_by_a_dead_resave_is_found_and_put_back(tmp_path):
    m = model()
    save(tmp_path, 4, m, keep=3)
    path = save(tmp_path, 5, m, keep=3)
    os.rename(path, tmp_path / ".old-step-00000005-4242")  # killed between moving it aside and renaming the new copy
    (tmp_path / ".tmp-step-00000006-4242").mkdir()  # and a save of another process that died half-way
    ckpt = load_latest(tmp_path)
    assert ckpt.step == 5 and ckpt.path.name == ".old-step-00000005-4242"
    save(tmp_path, 6, m, keep=3)  # the next save tidies up
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000004", "step-00000005", "step-00000006"], names


def test_cuda_generator_states_are_saved_and_restored(monkeypatch):
    """No GPU here: torch.cuda's generator calls are replaced by a recorder, which is all the code touches."""
    from gspo_async.learner import checkpoint

    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append(new))
    saved = checkpoint.rng_state()
    assert [s.tolist() for s in saved["cuda"]] == [[1, 2], [3]]
    checkpoint.set_rng_state(saved)
    assert [s.tolist() for s in restored[0]] == [[1, 2], [3]]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="same CUDA_VISIBLE_DEVICES"):
        checkpoint.set_rng_state(saved)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint.set_rng_state(saved)  # resumed without CUDA: CPU states restored, CUDA ones logged and skipped
    assert len(restored) == 1
    assert "cuda" not in checkpoint.rng_state()


def test_exported_weights_replace_the_models_own(tmp_path):
    """A ZeRO-3 rank holds only its partition: the checkpoint exports the gathered weights it is given."""
    m = model()
    full = {k: torch.full_like(v, 0.5) for k, v in m.state_dict().items()}
    path = save_checkpoint(tmp_path, step=1, version=1, model=m, tokenizer=None, trainer_state={}, state={}, keep=1,
                           model_state=full)
    loaded = AutoModelForCausalLM.from_pretrained(path / "model")
    assert all(bool((v == 0.5).all()) for v in loaded.state_dict().values())
