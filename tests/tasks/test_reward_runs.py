"""Real learner and actor processes train the quickstart model with users' reward functions, unwrapped.

- every convention at once (per response by name, three positional, verl compute_score with a dict, TRL batch with
  None), each function logged as reward/<name>/mean with non-zero values;
- the three-positional-argument function alone, as `task.reward` (the silent-zero case this guards against);
- a reward raising on every call: `gspo-async local` exits non-zero before step 1, with the message;
- a reward that starts failing mid-run: the learner stops at the error limit, saves, and accounts for every prompt;
- a reward that returns a constant: the learner warns once, naming the likely causes, and trains on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gspo_async.learner.checkpoint import list_checkpoints
from tests.integration.conftest import ROOT, Cluster, wait_for

pytestmark = pytest.mark.slow

SMALL = ["rollout_batch_size=4", "num_return_sequences_in_group=4", "response_length=6", "learner.eval_every=0",
         "actor.prompts_per_lease=4", "learner.heartbeat_timeout_s=10", "learner.lease_timeout_s=60",
         "learner.weight_sync.timeout_s=20", "telemetry.dashboard_port=null", "learner.checkpoint.every=0",
         "task.reward_workers=2", "task.reward_timeout_s=20"]

REWARDS = textwrap.dedent('''
    import os

    def by_name(completion, answer, **kwargs):
        return float(completion.strip() == answer)

    def three_positional(q, c, a):
        return float(c.strip() == a)

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        ok = float(solution_str.strip() == ground_truth)
        return {"score": ok, "digits": float(len(solution_str.strip()))}

    def batch(prompts, completions, answer, **kwargs):
        # 'not applicable' to odd answers: the mean is over the even ones only
        return [None if int(a) % 2 else float(c.strip() == a) for c, a in zip(completions, answer)]

    def always_raises(prompt, response, answer):
        return {"score": float(response == answer)}["scor"]

    def constant(prompt, response, answer):
        return 0.5

    def fails_after_flag(prompt, response, answer):
        if os.path.exists(os.environ["REWARD_FAIL_FLAG"]):
            raise RuntimeError("the judge went away")
        return float(response.strip() == answer)
    ''')


@pytest.fixture
def cluster(tmp_path, tiny_model_dir):
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "user_rewards.py").write_text(REWARDS)
    made = []

    def make(overrides):
        c = Cluster(tmp_path, tiny_model_dir, [*SMALL, *overrides])
        c.env["PYTHONPATH"] = f"{tmp_path / 'mod'}:{c.env.get('PYTHONPATH', '')}"
        c.env["REWARD_FAIL_FLAG"] = str(tmp_path / "fail-now")
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()


def reward_rows(c):
    return [r for r in c.metrics() if r.get("role", "learner") == "learner" and "reward/mean" in r]


def test_every_convention_trains_unwrapped_and_is_logged_per_function(cluster):
    c = cluster(["learner.total_steps=3",
                 "task.rewards=[{fn: user_rewards:by_name}, {fn: user_rewards:three_positional}, "
                 "{fn: 'user_rewards:compute_score', weight: 0.5}, {fn: user_rewards:batch, weight: 2}]"])
    learner = c.learner()
    c.actor("a0")
    assert learner.wait(timeout=400) == 0, c.dump_logs()
    rows = reward_rows(c)
    assert rows, c.dump_logs()
    for name in ("by_name", "three_positional", "compute_score", "batch"):
        assert any(r.get(f"reward/{name}/mean", 0) > 0 for r in rows), (name, rows[-1])
    assert any(r.get("reward/compute_score/digits", 0) >= 1 for r in rows)
    assert all(r["reward/errors/exception"] == 0 and r["reward/errors/bad_value"] == 0 for r in rows)


def test_three_positional_arguments_alone_give_non_zero_rewards(cluster):
    c = cluster(["learner.total_steps=2", "task.reward=user_rewards:three_positional"])
    learner = c.learner()
    c.actor("a0")
    assert learner.wait(timeout=400) == 0, c.dump_logs()
    rows = reward_rows(c)
    assert max(r["reward/mean"] for r in rows) > 0, c.dump_logs()
    assert max(r["reward/three_positional/mean"] for r in rows) > 0


def test_a_reward_raising_on_every_call_stops_local_before_step_1(cluster, tmp_path):
    c = cluster([])
    cmd = [sys.executable, "-m", "gspo_async", "local", str(ROOT / "configs/quickstart.yaml"),
           *[o for o in c.overrides if not o.startswith("learner.port") and not o.startswith("learner.weight_store")],
           "task.reward=user_rewards:always_raises", "local.num_actors=1"]
    done = subprocess.run(cmd, cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "reward function 'always_raises' (user_rewards:always_raises) failed before training" in out
    assert "signature:  always_raises(prompt, response, answer)" in out
    assert "call tried: always_raises(prompt=" in out and "KeyError: 'scor'" in out
    assert not any(int(r.get("step", 0)) >= 1 for r in c.metrics())  # no training step was taken


def test_a_reward_failing_mid_run_stops_the_learner_at_the_limit_and_keeps_every_group(cluster, tmp_path):
    c = cluster(["learner.total_steps=50", "task.reward=user_rewards:fails_after_flag",
                 "task.reward_error_window=4", "task.reward_error_limit=0.05"])
    learner = c.learner()
    c.actor("a0")
    wait_for(lambda: c.trained_steps() >= 2, 300, "two trained steps", (learner,))
    (tmp_path / "fail-now").write_text("")  # from now on every call raises
    code = learner.wait(timeout=400)
    log = c.log("learner")
    assert code not in (0, None), log
    assert "reward errors:" in log and "RuntimeError: the judge went away" in log, c.dump_logs()
    summary = json.loads((c.run_dir / "summary.json").read_text())
    assert 2 <= summary["steps"] < 50
    assert summary["accounting"]["balanced"], summary["accounting"]
    assert list_checkpoints(c.run_dir / "checkpoints"), "the final checkpoint was not written"
    errors = [r["reward/errors/exception"] for r in reward_rows(c)]
    assert errors[-1] > 0 and errors[0] == 0


def test_a_constant_reward_warns_once_of_zero_learning_signal(cluster):
    c = cluster(["learner.total_steps=4", "task.reward=user_rewards:constant", "task.constant_reward_steps=2"])
    learner = c.learner()
    c.actor("a0")
    assert learner.wait(timeout=400) == 0, c.dump_logs()
    log = c.log("learner")
    assert log.count("identical rewards") == 1, log
    assert "every group of the first 2 steps had identical rewards (values [0.5])" in log
    assert "zero learning signal under grpo" in log and "docs/tasks.md" in log
