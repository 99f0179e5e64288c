"""The config schema: the seed example loads, overrides apply, every kind of bad config has its own message."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gspo_async.config import Config, ConfigError, ConfigWarning, load_config

ROOT = Path(__file__).resolve().parents[1]
SEED = {
    "adv_estimator": "reinforce", "importance_sampling": "seq", "rollout_batch_size": 64,
    "num_return_sequences_in_group": 8, "prompt_length": 2048, "response_length": 4096, "ppo_epochs": 1,
    "use_kl_loss": True, "kl_loss_coef": 0.001, "loss_agg_mode": "seq-mean-token-sum", "whiten_advantages": True,
    "advantage_clip": 2.0, "dual_clip_loss": True, "reward_clip": 10, "reward_norm": None, "reward_shift": False,
    "reward_scale": False, "add_token_level_kl": False,
}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_seed_example_loads_with_exactly_the_seed_values_and_warns():
    with pytest.warns(ConfigWarning, match="scale with response length"):
        cfg = load_config(ROOT / "configs/example_gspo.yaml")
    for key, value in SEED.items():
        assert getattr(cfg, key) == value, key
    # The seed sets no clip range: GSPO gets the paper's.
    assert cfg.clip_range == (3e-4, 4e-4)


def test_defaults_are_the_paper_gspo_settings():
    cfg = Config()
    assert cfg.importance_sampling == "seq"
    assert cfg.loss_agg_mode == "seq-mean-token-mean"
    assert cfg.clip_range == (3e-4, 4e-4)
    assert Config(importance_sampling="token").clip_range == (0.2, 0.27)
    assert Config(pg_clip=0.1).clip_range == (0.1, 0.1)
    assert Config(pg_clip=0.1, pg_clip_high=0.3).clip_range == (0.1, 0.3)


def test_no_warning_for_paper_aggregation(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_config(write(tmp_path, "loss_agg_mode: seq-mean-token-mean\n"))


def test_dotted_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "learner:\n  port: 7000\n"),
                      ["learner.port=6000", "ppo_epochs=3", "off_policy.correction=decoupled", "reward_norm=null"])
    assert cfg.learner.port == 6000 and cfg.ppo_epochs == 3
    assert cfg.off_policy.correction == "decoupled" and cfg.reward_norm is None


def test_unknown_key_names_key_file_line_and_closest(tmp_path):
    path = write(tmp_path, "ppo_epochs: 1\nlearner:\n  host: 127.0.0.1\n  prot: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "learner.prot" in msg and f"{path}:4" in msg and "learner.port" in msg


def test_unknown_top_level_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'loss_agg_mod'.*did you mean 'loss_agg_mode'"):
        load_config(write(tmp_path, "loss_agg_mod: token-mean\n"))


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match="valid keys here: .*engine"):
        load_config(write(tmp_path, "actor:\n  zzzzqqq: 1\n"))


def test_bad_enum_value_names_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "loss_agg_mode: mean\n"))
    msg = str(err.value)
    assert ":1" in msg and "'token-mean'" in msg and "'seq-mean-token-sum-norm'" in msg
    with pytest.raises(ConfigError, match="'batch'.*'group'.*'running'"):
        load_config(write(tmp_path, "reward_norm: batchh\n"))


def test_bad_number_and_type(tmp_path):
    with pytest.raises(ConfigError, match="rollout_batch_size.*greater than or equal to 1"):
        load_config(write(tmp_path, "rollout_batch_size: 0\n"))
    with pytest.raises(ConfigError, match="ppo_epochs"):
        load_config(write(tmp_path, "ppo_epochs: many\n"))


def test_bad_override_and_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["ppo_epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(write(tmp_path, "ppo_epochs: 1\n"), ["ppo_epochs.x=1"])


def test_exclusive_shift_and_scale(tmp_path):
    with pytest.raises(ConfigError, match="reward_shift and reward_scale are exclusive"):
        load_config(write(tmp_path, "reward_shift: true\nreward_scale: true\n"))


def test_every_config_in_configs_dir_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            load_config(path)


@pytest.mark.slow
def test_cli_config_check_prints_resolved_and_fails_on_error(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "gspo_async", "config", "check", str(ROOT / "configs/example_gspo.yaml")],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "loss_agg_mode: seq-mean-token-sum" in ok.stdout and "warning:" in ok.stderr
    bad = subprocess.run([sys.executable, "-m", "gspo_async", "config", "check", str(write(tmp_path, "ppo_epoch: 1\n"))],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "did you mean 'ppo_epochs'" in bad.stderr


@pytest.mark.slow
def test_cli_help_does_not_import_torch():
    code = "import sys; from gspo_async.cli import build_parser; build_parser(); import gspo_async.config; " \
           "print('torch' in sys.modules, 'zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False False"


def test_mode_lists_come_from_algo_modes():
    # One definition per mode list: the schema's choices are algo.modes' tuples, so a mode added there is accepted
    # by the config and a mode the loss refuses is refused by the config.
    from gspo_async.algo import modes
    from gspo_async.config import Config

    fields = Config.model_fields
    assert fields["loss_agg_mode"].annotation.__args__ == modes.LOSS_AGG_MODES
    assert fields["adv_estimator"].annotation.__args__ == modes.ADV_ESTIMATORS
    assert fields["importance_sampling"].annotation.__args__ == modes.IMPORTANCE_SAMPLING
    assert fields["reward_norm"].annotation.__args__ == modes.REWARD_NORMS