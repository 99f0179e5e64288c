"""The README's quickstart command, run as written, with fewer steps.

The command is read from the README's first code block (so the test breaks when the README's command does), and run
with overrides: 24 steps instead of 300 (the full run takes about 2 minutes on a quiet 2-core machine and far
longer on a loaded CI machine), evaluation every 12 steps, a run directory and ports of its own, and the session's
cached tiny model (built by the same `build_tiny` with the quickstart's settings, so the ~25 s build is not
repeated). Everything else is the quickstart's own config: a learner and two actor processes on loopback.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, free_port, read_jsonl

pytestmark = pytest.mark.slow

STEPS = 24


def readme_quickstart() -> list[str]:
    """The `gspo-async local ...` command of the README's first code block, as argv."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no bash code block"
    commands = [part.strip() for line in block.group(1).splitlines() if not line.lstrip().startswith("#")
                for part in line.split("&&")]
    local = [c for c in commands if c.startswith("gspo-async local")]
    assert len(local) == 1, f"expected one `gspo-async local` command in the README's first block: {commands}"
    return shlex.split(local[0])


def test_readme_quickstart_command_trains_and_reports(tiny_model_dir, tmp_path):
    argv = readme_quickstart()
    assert argv[:3] == ["gspo-async", "local", "configs/quickstart.yaml"], argv
    run_dir = tmp_path / "quickstart"
    overrides = [f"run_dir={run_dir}", f"model.path={tiny_model_dir}", f"learner.total_steps={STEPS}",
                 "learner.eval_every=12", f"learner.port={free_port()}", f"learner.weight_store_port={free_port()}"]
    proc = subprocess.run([sys.executable, "-m", "gspo_async", *argv[1:], *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=580)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # What the README says the quickstart prints: a progress line per step, the dashboard URL, a summary.
    steps_logged = {int(m) for m in re.findall(rf"\[learner\] step (\d+)/{STEPS} ", out)}
    assert steps_logged == set(range(1, STEPS + 1)), sorted(steps_logged)
    assert "dashboard: http://" in out
    summary_line = re.search(r"\[local\] summary: (\d+) steps, held-out accuracy ([\d.]+) -> ([\d.]+)", out)
    assert summary_line and int(summary_line.group(1)) == STEPS, out[-2000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == summary["version"] == STEPS
    assert [step for step, _ in summary["eval_accuracy"]] == [0, 12, 24]
    assert summary["accounting"]["balanced"], summary["accounting"]
    assert summary["accounting"]["trained"] == STEPS * 16  # rollout_batch_size 16 of the quickstart config
    # Both actors generated: the learner's per-step records name each one.
    rows = read_jsonl(run_dir / "metrics.jsonl")
    actors = {k.split("/")[1] for r in rows for k in r if k.startswith("actor/")}
    assert {"actor-0", "actor-1"} <= actors, actors
