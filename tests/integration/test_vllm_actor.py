"""The vLLM actor end to end over the CPU test double: a real learner trains on groups that `VLLMEngine` generated,
and the actor takes every weight version through the default `actor.vllm.weight_transport` (auto: host bytes
through the production worker extension for CPU tensors). Emulating vLLM 0.24 (DELTA outputs, versions tracked by
the engine) and 0.33 (FINAL_ONLY outputs, vLLM's own weight-version labels). The actor loop applies versions
between batches, so `update_mode` plays no part here; updates in the middle of a generation are covered by
tests/engines/test_vllm.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, read_jsonl, wait_for

pytestmark = pytest.mark.slow

STEPS = 4
SMALL = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=2", "learner.weight_sync.timeout_s=20", "telemetry.dashboard_port=null",
         "learner.checkpoint.every=0", f"learner.total_steps={STEPS}", "actor.engine=vllm"]


@pytest.mark.parametrize("vllm_version", ["0.24.0", "0.33.0"])
def test_vllm_actor_trains_through_the_default_weight_transport(cluster_factory, tmp_path, vllm_version):
    c = cluster_factory(SMALL)
    report = tmp_path / "actor.json"
    learner = c.learner()
    log = tmp_path / "vllm-actor.log"
    c.logs["vllm-actor"] = log
    actor = subprocess.Popen([sys.executable, "-m", "tests.integration.vllm_fake_actor", "--learner",
                              f"127.0.0.1:{c.port}", "--id", "v0", "--report", str(report), "--vllm-version", vllm_version],
                             cwd=ROOT, env=c.env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    c.procs.append(actor)
    try:
        assert learner.wait(timeout=300) == 0, c.dump_logs()
        # the last version may land after the learner's last step: wait for one past the first
        wait_for(lambda: report.is_file() and json.loads(report.read_text())["stats"]["version"] >= 1, 60,
                 "the actor to apply a trained version", (actor,))
        actor.send_signal(signal.SIGKILL)  # its part is over; a graceful stop would wait for acks nobody sends
    finally:
        c.stop_all()
    steps = [r for r in read_jsonl(c.run_dir / "metrics.jsonl") if "step" in r]
    assert max(int(r["step"]) for r in steps) == STEPS, c.dump_logs()
    got = json.loads(report.read_text())
    assert got["weight_transport"] == "auto" and got["transport_last"] == "host", got
    assert got["vllm_version"] == vllm_version
    stats = got["stats"]
    assert stats["updates_total"] >= 2 and stats["failed_updates_total"] == 0, stats  # first weights + a trained one
    assert stats["tokens_total"] > 0 and got["aborts_of_finished"] == 0, got
