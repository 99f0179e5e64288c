"""Atomic checkpoints: write everything into a temporary directory, fsync, then rename.

Layout: ``<run_dir>/checkpoints/step-00000050/`` with

- ``model/``: the policy in Hugging Face format (plus the tokenizer), loadable by any HF tool;
- ``trainer.pt``: optimiser and schedule state, RNG states, running reward statistics;
- ``state.json``: step, version, coordinator state (leases, prompt cursor, accounting), written last.

A checkpoint directory exists under its final name only once it is complete (``rename`` is atomic on POSIX), so a
crash or a full disk during a save leaves the previous checkpoint as the newest valid one. Only the last ``keep``
are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})$")
_ASIDE = re.compile(r"^\.old-step-(\d{8})-\d+$")  # a complete step moved aside while the same step is re-saved


@dataclass
class Checkpoint:
    path: Path
    step: int
    version: int
    state: dict[str, Any]


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when CUDA is present) every CUDA device's generator state."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. CUDA states are restored when both the checkpoint and this process have CUDA
    (device counts must match); a checkpoint with CUDA states resumed without CUDA is logged, not an error."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None:
        return
    if not torch.cuda.is_available():
        log.warning("the checkpoint holds CUDA generator states but this process has no CUDA: they are not restored")
        return
    if len(cuda) != torch.cuda.device_count():
        raise ValueError(f"the checkpoint holds generator states of {len(cuda)} CUDA devices, this process sees "
                         f"{torch.cuda.device_count()}: resume with the same CUDA_VISIBLE_DEVICES")
    torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(root: Path, *, step: int, version: int, model: torch.nn.Module, tokenizer: Any,
                    trainer_state: dict[str, Any], state: dict[str, Any], keep: int,
                    extra_writer: Optional[Callable[[Path], None]] = None,
                    model_state: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write checkpoint `step` atomically under `root` and prune to the newest `keep`. Raises OSError on failure
    (after removing the partial temporary directory); the previous checkpoints are untouched either way.
    `extra_writer(tmp_dir)` adds engine-specific files (e.g. DeepSpeed's partitioned optimiser state) before the
    directory is sealed. `model_state`: the full weights to export in place of `model`'s own (a ZeRO-3 model holds
    only its partition; the engine's ``export_state_dict()`` gathers them)."""
    root.mkdir(parents=True, exist_ok=True)
    _tidy(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=model_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
        if extra_writer is not None:
            extra_writer(tmp)
        (tmp / "state.json").write_text(json.dumps({"step": step, "version": version, **state}))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (the final save after a periodic one): never delete before renaming
            aside = root / f".old-step-{step:08d}-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(final, aside)
            try:
                os.rename(tmp, final)
            except OSError:
                os.rename(aside, final)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as err:  # serialisers wrap I/O failures (safetensors: "File too large", "No space left")
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing checkpoint step {step} under {root} failed: {err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _tidy(root: Path) -> None:
    """Clean up after saves that died (only the saving process calls this: one learner writes a run directory).
    Temporary directories of other processes are removed; a step moved aside whose re-save never landed is put
    back under its name, and one that did land is removed."""
    for path in root.iterdir():
        if path.name.startswith(".tmp-step-") and not path.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(path, ignore_errors=True)
        elif (m := _ASIDE.match(path.name)) is not None:
            final = root / f"step-{m.group(1)}"
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = {int(m.group(1)): p for p in root.iterdir()
             if p.is_dir() and (m := _NAME.match(p.name)) and (p / "state.json").is_file()}
    for p in root.iterdir():  # a step moved aside by a re-save that died before its new copy landed
        m = _ASIDE.match(p.name)
        if m is not None and p.is_dir() and int(m.group(1)) not in found and (p / "state.json").is_file():
            found[int(m.group(1))] = p
    return [found[k] for k in sorted(found)]


def load_latest(root: Path) -> Optional[Checkpoint]:
    """The newest checkpoint that reads back whole (a damaged one is skipped with a warning), or None."""
    for path in reversed(list_checkpoints(root)):
        try:
            state = json.loads((path / "state.json").read_text())
            if not (path / "trainer.pt").is_file() or not (path / "model").is_dir():
                raise ValueError("missing trainer.pt or model/")
            return Checkpoint(path, int(state["step"]), int(state["version"]), state)
        except (ValueError, KeyError, OSError) as err:
            print(f"warning: skipping damaged checkpoint {path}: {err}", flush=True)
    return None


def load_trainer_state(ckpt: Checkpoint) -> dict[str, Any]:
    # weights_only=False: the file holds numpy RNG state; it is our own file inside the run directory.
    return torch.load(ckpt.path / "trainer.pt", map_location="cpu", weights_only=False)
