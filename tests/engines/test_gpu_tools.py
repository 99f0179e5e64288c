"""tools/gpu/: the GPU configs load, the GPU scripts run end to end over the CPU vLLM double, and
`smoke.sh --dry-run` prints the steps and what the GPU calls would carry (fetched parts, or the measured sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gspo_async.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["gpu_qwen2.5-1.5b.yaml", "gpu_qwen2.5-7b.yaml"])
def test_gpu_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.actor.engine == "vllm" and cfg.learner.device.startswith("cuda")
    assert cfg.clip_range == (3e-4, 4e-4) and cfg.loss_agg_mode == "seq-mean-token-mean"
    assert cfg.task.name == "jsonl" and cfg.task.reward == "math" and not cfg.model.build_tiny_if_missing
    assert cfg.sampling.top_p == 1.0 and cfg.sampling.top_k == 0
    assert cfg.actor.vllm.logprobs_mode == "processed_logprobs"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_vllm.py", "check_vllm.py", "smoke_vllm.py"])
def test_gpu_scripts_dry_run_over_the_test_double(script, tmp_path):
    """tools/gpu/ scripts run end to end on the CPU double, so they do not rot before a GPU runs them."""
    out = tmp_path / "result.json"
    extra = {"check_vllm.py": ["--max-new-tokens", "40"],
             "smoke_vllm.py": ["--shape", "tiny", "--prompts", "2", "--n", "2", "--max-new-tokens", "12"]}.get(script, [])
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu" / script), "--fake", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["fake"] is True
    if script == "check_vllm.py":
        assert report["all_ok"], report["checks"]
    elif script == "smoke_vllm.py":
        assert report["all_ok"], report["steps"]
        assert list(report["steps"]) == ["first_weights", "update_keep", "update_abort"]
        for name, step in report["steps"].items():
            parity = step if name == "first_weights" else step["parity_fresh"]
            assert parity["tokens"] > 0 and parity["max_abs"] < 1e-4, (name, step)  # fp32 double: exact
            assert step["transport"] == "host"  # weight_transport auto, CPU tensors
        assert report["steps"]["update_abort"]["resubmitted_total"] > 0
        assert report["steps"]["update_keep"]["split"] > 0
        from tools.gpu.smoke_vllm import render_markdown

        table = render_markdown(report)
        assert "Dry run over the CPU test double" in table and "| update_abort | host |" in table
    else:
        assert report["generation"]["tokens_per_s"] > 0 and set(report["in_flight_updates"]) == {"keep", "abort"}
        assert report["bare_vllm"]["tokens_per_s"] > 0 and report["generation"]["vs_bare"] > 0


@pytest.mark.slow
def test_smoke_dry_run_prints_the_steps_and_the_carry(tmp_path):
    """`tools/gpu/smoke.sh --dry-run`: the steps, every file the GPU calls would carry and their total size."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-00").write_bytes(b"\0" * 3_000_000)
    (parts / "part-01").write_bytes(b"\0" * 1000)
    (parts / "SHA256SUMS").write_text("x" * 148)
    env = {**os.environ, "SRC": str(parts)}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "smoke.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "steps:" in out and "smoke_vllm.py" in out and "install.sh" in out
    assert "part-00" in out and "3000000 bytes" in out and "part-01" in out and "SHA256SUMS" in out
    assert "total to carry: 3001148 bytes" in out and "in 2 parts" in out
    assert "2 carry calls" in out and "working tree" in out
    env["SRC"] = str(tmp_path / "none")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "smoke.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0 and "fetch_wheels.sh" in proc.stdout
    # Nothing fetched: the sizes tools/gpu/measure_carry.py measured are printed, from its JSON.
    measured = {"vllm_version": "0.24.0", "measured_at": "T", "vllm_wheel_bytes": 5 * 2**20, "carried_packages": 2,
                "carried_bytes": 7 * 2**20 + 3, "vllm_requires_torch": "==2.11.0", "conflicts": {"x": "y"},
                "carried": {"vllm": {"wheel": "vllm-0.24.0.whl", "bytes": 5 * 2**20}}, "not_measured": "install time"}
    (tmp_path / "carry.json").write_text(json.dumps(measured))
    env.update(MEASURED=str(tmp_path / "carry.json"), VLLM_VERSION="0.24.0")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "smoke.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 wheels the image lacks, 7340035 bytes (7.0 MiB)" in proc.stdout and "vllm-0.24.0.whl" in proc.stdout
    assert "at least 1 carry calls" in proc.stdout and "x: y" in proc.stdout and "not measured: install" in proc.stdout
    env["VLLM_VERSION"] = "0.33.0"  # measured for another release: says so and how to measure
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "smoke.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0 and "Not measured for vLLM 0.33.0" in proc.stdout
