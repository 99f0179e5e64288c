"""What the learner checks before it starts: the launcher's world size against the engine, and the config a
--resume runs with (the run's saved settings, command-line overrides on top, a missing run refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gspo_async.config import load_config
from gspo_async.learner.main import check_world
from gspo_async.learner.resume import learner_config
from gspo_async.process import StartupError

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_several_ranks_need_the_deepspeed_engine():
    cfg = load_config(QUICKSTART)
    assert check_world(cfg, {}) == 1
    assert check_world(cfg, {"WORLD_SIZE": "1"}) == 1
    with pytest.raises(StartupError, match=r"WORLD_SIZE=4.*learner.engine=deepspeed.*gspo-async\[deepspeed\]"):
        check_world(cfg, {"WORLD_SIZE": "4"})
    ds = load_config(QUICKSTART, ["learner.engine=deepspeed"])
    assert check_world(ds, {"WORLD_SIZE": "4"}) == 4
    with pytest.raises(StartupError, match="not a number"):
        check_world(cfg, {"WORLD_SIZE": "two"})


def test_without_resume_the_given_config_is_used(tmp_path):
    cfg, resume = learner_config(QUICKSTART, [f"run_dir={tmp_path / 'r'}", "learner.total_steps=7"], resume=False)
    assert not resume and cfg.learner.total_steps == 7


def test_resume_reads_the_saved_config_with_overrides_on_top(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = load_config(QUICKSTART, [f"run_dir={run_dir}", "learner.total_steps=123", "optim.lr=0.005"])
    (run_dir / "config.yaml").write_text(started.to_yaml())
    # the command line names only the run dir and one change; the other settings come from the saved run
    cfg, resume = learner_config(QUICKSTART, [f"run_dir={run_dir}", "learner.total_steps=200"], resume=True)
    assert resume
    assert cfg.learner.total_steps == 200  # the override wins
    assert cfg.optim.lr == 0.005  # kept from the run, not the quickstart's
    assert load_config(QUICKSTART).optim.lr != 0.005
    assert Path(cfg.run_dir) == run_dir


def test_resume_of_a_missing_run_is_refused_unless_asked_to_start(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(StartupError, match=r"no run to resume in .*nothing-here.*--start-if-missing"):
        learner_config(QUICKSTART, [f"run_dir={missing}"], resume=True)
    cfg, resume = learner_config(QUICKSTART, [f"run_dir={missing}"], resume=True, start_if_missing=True)
    assert not resume and Path(cfg.run_dir) == missing


def test_cli_prints_a_refusal_as_one_line(tmp_path, capsys):
    from gspo_async.cli import main

    assert main(["learner", str(QUICKSTART), f"run_dir={tmp_path / 'none'}", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: no run to resume in"), err
