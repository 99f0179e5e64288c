"""The whole learner on DeepSpeed ZeRO-3 over two gloo ranks (torchrun), with a real actor: held-out evaluation with
every rank taking part, the checkpoint's gathered Hugging Face export, and that export equal to the weights the
actor received."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gspo_async.learner.checkpoint import list_checkpoints
from tests.integration.conftest import ROOT, Cluster, free_port
from tests.integration.test_training import SMALL, applied, checksum_of

pytestmark = pytest.mark.slow


class TorchrunCluster(Cluster):
    """A Cluster whose learner is two processes under torchrun (rank 0 the learner, rank 1 a follower)."""

    def learner(self, *extra: str) -> subprocess.Popen:
        log = self.tmp / "learner.log"
        self.logs["learner"] = log
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "gspo_async", "learner", str(ROOT / "configs/quickstart.yaml"),
               *self.overrides, *extra]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, "TORCH_EXTENSIONS_DIR": str(self.tmp / "ext")},
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.names[proc] = "learner"
        return proc


def test_zero3_learner_evaluates_exports_and_broadcasts_the_same_weights(tmp_path, tiny_model_dir):
    overrides = [o for o in SMALL if not o.startswith("learner.eval_every")]
    c = TorchrunCluster(tmp_path, tiny_model_dir, [
        *overrides, "learner.engine=deepspeed", "learner.deepspeed.zero_stage=3", "learner.total_steps=2",
        "learner.eval_every=2", "task.eval_size=8", "learner.eval_max_new_tokens=4", "learner.checkpoint.every=0",
        "learner.weight_sync.bucket_mb=1", "off_policy.max_staleness=1"])
    learner = c.learner()
    c.actor("a0")
    try:
        assert learner.wait(timeout=480) == 0, c.dump_logs()
    finally:
        c.stop_all()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert summary["steps"] == 2, c.dump_logs()
    evals = dict((int(s), a) for s, a in summary["eval_accuracy"])
    assert set(evals) == {0, 2} and all(0.0 <= a <= 1.0 for a in evals.values()), summary["eval_accuracy"]

    # The final checkpoint's export is the gathered policy: it differs from the start and is exactly what the actor
    # holds after applying the last broadcast version (the checksum covers names, dtypes, shapes and bytes).
    final = list_checkpoints(c.run_dir / "checkpoints")[-1]
    export_sum = checksum_of(final / "model")
    assert export_sum != checksum_of(tiny_model_dir)
    held = applied(c.log("a0"))
    assert 2 in held, c.dump_logs()
    assert held[2] == export_sum
    assert (final / "deepspeed").is_dir()  # and the ZeRO partitions --resume continues from
