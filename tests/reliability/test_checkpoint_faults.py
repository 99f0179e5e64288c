"""Checkpoint saves interrupted in a real learner: the process killed during the write, and a full disk.

Either way the previous checkpoint stays loadable (model and trainer state), a learner resumed from it trains on,
and the ledger replayed across the resumes agrees with the final checkpoint: no prompt trained twice, none lost.
The unit-level versions (save_checkpoint alone, one kill and one full disk) are in tests/learner/test_checkpoint.py;
here the faults hit the learner process while it trains with a live actor. GSPO_SOAK_S lengthens the kill loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import pytest
from transformers import AutoModelForCausalLM

from gspo_async.learner.checkpoint import Checkpoint, list_checkpoints, load_latest, load_trainer_state
from tests.integration.conftest import ROOT, Cluster, wait_for
from tests.integration.test_fleet import FLEET
from tests.reliability.conftest import check_against_final_checkpoint, check_ledger, duration

pytestmark = pytest.mark.slow

# The fleet test's small, fast run, saving after every step (so a random moment is often inside a save).
SAVE_EVERY_STEP = [o for o in FLEET if not o.startswith(("learner.checkpoint.every=", "learner.total_steps="))] + [
    "learner.checkpoint.every=1", "learner.checkpoint.keep=2"]
# A file-size limit below the tiny model's weights (~2 MB) and above the run's small files (metrics, ledger, log).
FULL_DISK_BYTES = 1 << 20


def temp_dirs(root: Path, pid: Optional[int] = None) -> list[Path]:
    """Temporary checkpoint directories under `root` (of process `pid` only, if given)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith(".tmp-") and (pid is None or p.name.endswith(f"-{pid}"))]


def check_loadable(root: Path) -> Checkpoint:
    """load_latest picks a complete checkpoint under its final name, and its model and trainer state load."""
    ckpt = load_latest(root)
    assert ckpt is not None, f"no loadable checkpoint among {sorted(p.name for p in root.iterdir())}"
    # (".old-step-N-PID": step N moved aside by a re-save of N that was killed before its new copy took the name)
    name = re.fullmatch(r"(?:\.old-)?step-(\d{8})(?:-\d+)?", ckpt.path.name)
    assert ckpt.path.parent == root and name, f"load_latest chose {ckpt.path}"
    assert ckpt.step == int(name.group(1)), (ckpt.path, ckpt.step)
    AutoModelForCausalLM.from_pretrained(ckpt.path / "model")
    assert {"engine", "running", "generator", "rng"} <= set(load_trainer_state(ckpt))
    return ckpt


def tree_digest(path: Path) -> str:
    """A digest of every file (name and bytes) under `path`: equal digests mean an untouched checkpoint."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def plant_decoy(root: Path, ckpt: Checkpoint) -> Path:
    """A stale temporary directory that looks complete and newer than anything real: load_latest must ignore it."""
    decoy = root / ".tmp-step-99999999-1"
    shutil.copytree(ckpt.path, decoy)
    state = json.loads((decoy / "state.json").read_text())
    (decoy / "state.json").write_text(json.dumps({**state, "step": 99_999_999, "version": 99_999_999}))
    return decoy


class LearnerRun:
    """One learner process of a cluster, and the part of the cluster's (shared, appended) learner log it wrote."""

    def __init__(self, c: Cluster, *extra: str):
        self.c = c
        self.offset = len(c.log("learner"))
        self.proc = c.learner(*extra)

    def log(self) -> str:
        return self.c.log("learner")[self.offset:]

    def steps(self) -> list[int]:
        return [int(s) for s in re.findall(r"\[learner\] step (\d+)/", self.log())]

    def last_step(self) -> int:
        return max(self.steps(), default=-1)

    def resumed(self) -> Optional[tuple[str, int]]:
        m = re.search(r"resumed from (\S+) at step (\d+)", self.log())
        return (m.group(1), int(m.group(2))) if m else None


def test_kills_during_saves_leave_the_previous_checkpoint_and_resumes_lose_nothing(cluster_factory, rng, record):
    """SIGKILLs of the learner, often while a save is in progress: after each one the newest complete checkpoint
    loads (never a temporary directory, not even a complete-looking one), the learner resumed from it continues
    at the next step, and at the end the ledger across all resumes agrees with the final checkpoint."""
    c = cluster_factory([*SAVE_EVERY_STEP, "learner.total_steps=1000000"])
    root = c.run_dir / "checkpoints"
    kills = mid_save = loadable = resumes = steps_lost = 0
    run = LearnerRun(c)
    actor = c.actor("a0")
    wait_for(lambda: list_checkpoints(root) and run.last_step() >= 2, 180, "the first steps and checkpoints",
             (run.proc, actor))
    end = time.monotonic() + duration(12)
    while kills == 0 or time.monotonic() < end:
        pid = run.proc.pid
        # The first kill always aims at a save in progress; later ones at a save or after a few more steps.
        if kills == 0 or rng.random() < 0.5:
            wait_for(lambda: temp_dirs(root, pid), 60, "a save in progress", (run.proc, actor))
        else:
            target = run.last_step() + rng.randint(1, 6)
            wait_for(lambda: run.last_step() >= target, 60, f"step {target}", (run.proc, actor))
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        kills += 1
        # A process removes its temporary directory only by renaming or deleting it: one left means a save was cut.
        cut = temp_dirs(root, pid)
        last = run.last_step()

        ckpt = check_loadable(root)
        loadable += 1
        if cut:
            mid_save += 1
            cut_step = int(cut[0].name.split("-")[2])
            assert ckpt.step == cut_step - 1, f"save of step {cut_step} cut, but load_latest gave step {ckpt.step}"
        assert ckpt.step >= last - 1, f"step {last} was trained, so step {last - 1} was saved; got {ckpt.step}"
        steps_lost += last - ckpt.step
        if kills == 1:
            plant_decoy(root, ckpt)
            assert load_latest(root).path == ckpt.path, "load_latest chose a temporary directory"

        run = LearnerRun(c, "--resume")
        resumes += 1
        wait_for(lambda: run.steps(), 120, f"the learner resumed from step {ckpt.step} to train",
                 (run.proc, actor))
        assert run.resumed() == (str(ckpt.path), ckpt.step), run.log()[-2000:]
        assert run.steps()[0] == ckpt.step + 1, run.log()[-2000:]

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=60) == 0, c.dump_logs()
    actor.send_signal(signal.SIGKILL)  # its part is over; a graceful stop would wait for acks nobody sends

    final = check_loadable(root)
    assert not temp_dirs(root), "saves clean up the temporary directories of killed processes"
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert final.step == summary["steps"] == run.last_step() and final.step > ckpt.step
    ledger, figures = check_ledger(c.run_dir)
    accounted = check_against_final_checkpoint(c.run_dir, ledger)
    assert figures["learner_starts"] == resumes + 1
    # A cut save of step S follows the ledger lines of step S (written first): the resume must have rolled them back.
    assert mid_save == 0 or figures["records_rolled_back"] > 0, figures
    record({"kills": kills, "kills_mid_save": mid_save, "resumes": resumes,
            "checkpoints_loadable_after_kill": loadable, "steps_lost_to_kills": steps_lost,
            "groups_lost": accounted["prompts_issued"] - len(ledger.trained) - len(ledger.dropped)
            - accounted["prompts_open_at_end"],
            "prompts_trained": figures["prompts_trained"], "records_rolled_back": figures["records_rolled_back"],
            "final_step": final.step})


def full_disk(limit: int) -> None:
    """In the child before exec: writes past `limit` bytes fail with EFBIG (an OSError) instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


class FullDiskCluster(Cluster):
    """A Cluster whose learner runs under a file-size limit while `fsize_limit` is set: a full disk, per process."""

    fsize_limit: Optional[int] = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        if name != "learner" or self.fsize_limit is None:
            return super()._start(name, args)
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gspo_async", *args], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=partial(full_disk, self.fsize_limit))
        self.procs.append(proc)
        self.names[proc] = name
        return proc


def test_full_disk_fails_every_save_but_training_goes_on_and_the_previous_checkpoint_resumes(
        tmp_path, tiny_model_dir, record):
    """A learner resumed on a full disk: every save fails and is cleaned up, training reaches its total steps, the
    previous checkpoint is untouched byte for byte, and a third learner with room again resumes from it."""
    c = FullDiskCluster(tmp_path, tiny_model_dir, SAVE_EVERY_STEP)
    root = c.run_dir / "checkpoints"
    try:
        first = LearnerRun(c, "learner.total_steps=3")
        actor = c.actor("a0")
        assert first.proc.wait(timeout=180) == 0, c.dump_logs()
        before = check_loadable(root)
        assert before.step == 3
        assert (before.path / "model" / "model.safetensors").stat().st_size > FULL_DISK_BYTES, "no save would fail"
        digest = tree_digest(before.path)
        kept = [p.name for p in list_checkpoints(root)]

        c.fsize_limit = FULL_DISK_BYTES
        limited = LearnerRun(c, "learner.total_steps=8", "--resume")
        c.fsize_limit = None
        assert limited.proc.wait(timeout=180) == 0, c.dump_logs()
        log, trained_on_full_disk = limited.log(), limited.steps()  # before the third run appends to the log
        assert limited.resumed() == (str(before.path), 3), log[-2000:]
        assert trained_on_full_disk == [4, 5, 6, 7, 8], log[-2000:]
        failed = [int(s) for s in re.findall(r"checkpoint at step (\d+) failed .*the previous one is intact", log)]
        assert set(failed) == {4, 5, 6, 7, 8}, log[-3000:]  # every save of the limited run, the final one included
        metric = max((r.get("checkpoint/failures", 0) for r in c.metrics()), default=0)
        assert metric >= 1, "checkpoint/failures never reached metrics.jsonl"
        assert not temp_dirs(root), f"partial checkpoints left: {temp_dirs(root)}"
        assert [p.name for p in list_checkpoints(root)] == kept
        assert check_loadable(root).path == before.path and tree_digest(before.path) == digest

        third = LearnerRun(c, "learner.total_steps=6", "--resume")
        assert third.proc.wait(timeout=180) == 0, c.dump_logs()
        assert third.resumed() == (str(before.path), 3), third.log()[-2000:]
        assert third.steps() == [4, 5, 6]
        assert check_loadable(root).step == 6
        actor.send_signal(signal.SIGKILL)  # its part is over; a graceful stop would wait for acks nobody sends
    finally:
        c.stop_all()

    ledger, figures = check_ledger(c.run_dir)
    accounted = check_against_final_checkpoint(c.run_dir, ledger)
    # The limited run's steps 4-8 are gone with its checkpoints: the third learner's resume rolled them back.
    assert figures["learner_starts"] == 3 and figures["records_rolled_back"] > 0, figures
    record({"full_disk_failed_saves": len(failed), "checkpoint_failures_metric": metric,
            "previous_checkpoint_loadable": True, "previous_checkpoint_unchanged": True,
            "steps_trained_on_full_disk": len(trained_on_full_disk), "resumed_after_full_disk_from": before.step,
            "prompts_trained": figures["prompts_trained"], "records_rolled_back": figures["records_rolled_back"],
            "groups_lost": accounted["prompts_issued"] - len(ledger.trained) - len(ledger.dropped)
            - accounted["prompts_open_at_end"], "final_step": accounted["final_step"]})
