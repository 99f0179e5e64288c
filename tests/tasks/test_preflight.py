"""`gspo-async preflight`: the table on the quickstart, exit 1 on a broken reward, the warnings it promises."""

import io
import subprocess
import sys
import textwrap

import pytest

from gspo_async.config import load_config
from gspo_async.preflight import main, run_preflight

ROOT_CONFIG = "configs/quickstart.yaml"


@pytest.fixture
def cfg_for(tiny_model_dir, tmp_path):
    def make(*overrides):
        return load_config(ROOT_CONFIG, [f"model.path={tiny_model_dir}", "model.build_tiny_if_missing=false",
                                         f"run_dir={tmp_path / 'run'}", "task.reward_workers=0", *overrides])
    return make


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    (tmp_path / "preflight_rewards.py").write_text(textwrap.dedent("""
        def broken(prompt, response, answer):
            return int(response) / 0

        def constant(prompt, response, answer):
            return 0.5
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "preflight_rewards"


def test_quickstart_passes_and_prints_prompts_and_the_table(cfg_for):
    out = io.StringIO()
    report = run_preflight(cfg_for(), out=out)
    text = out.getvalue()
    assert report.ok and report.eval_size == 200
    assert text.count("as the model sees it:") == 3 and "<bos>" in text  # special tokens visible
    assert "response" in text and "exact" in text and "truncated" in text
    assert len(report.rows) == 3 * 8
    for row in report.rows:  # the table's rewards are the reward function's own verdicts
        assert row["reward"] == row["by_fn"]["exact"] == float(row["response"].strip() == row["answer"])
    assert "preflight passed" in text


def test_broken_reward_is_an_error_with_the_call(cfg_for, broken_module):
    cfg = cfg_for(f"task.reward={broken_module}:broken")
    out = io.StringIO()
    report = run_preflight(cfg, out=out)
    assert not report.ok
    assert "ZeroDivisionError: division by zero" in out.getvalue() and "call tried: broken(prompt=" in out.getvalue()
    assert main(cfg) == 1


def test_warnings_for_truncation_and_equal_rewards(cfg_for, broken_module):
    report = run_preflight(cfg_for(f"task.reward={broken_module}:constant", "response_length=1"), out=io.StringIO())
    assert report.ok  # warnings are not errors
    joined = " ".join(report.warnings)
    assert "were cut at response_length 1" in joined and "every group's rewards are equal ([0.5])" in joined
    assert "over prompt_length" in " ".join(
        run_preflight(cfg_for("prompt_length=3"), out=io.StringIO()).warnings)


@pytest.mark.slow
def test_the_command_exits_0_on_the_quickstart(tiny_model_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "gspo_async", "preflight", ROOT_CONFIG, f"model.path={tiny_model_dir}",
                           "model.build_tiny_if_missing=false"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "preflight passed" in done.stdout and "as the model sees it" in done.stdout


@pytest.mark.slow
def test_the_command_exits_1_with_a_broken_reward(tiny_model_dir, tmp_path, broken_module):
    import os

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "gspo_async", "preflight", ROOT_CONFIG, f"model.path={tiny_model_dir}",
                           "model.build_tiny_if_missing=false", f"task.reward={broken_module}:broken"],
                          capture_output=True, text=True, timeout=300, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "reward function 'broken' (preflight_rewards:broken) failed before training" in out
    assert "ERROR: reward function" in out and "ZeroDivisionError: division by zero" in out
