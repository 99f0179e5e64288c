import pytest

from gspo_async.models.loading import load_model_and_tokenizer


def test_missing_directory_and_missing_config_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)
