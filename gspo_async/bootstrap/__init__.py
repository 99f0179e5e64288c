"""Making a model to train when the user has none: the tiny local Llama of the quickstart and the tests, built,
warmed up on a built-in task and saved in Hugging Face format, with no hub access.

It sits above `engines`, `tasks` and `models` (the warm-up evaluates with the transformers engine and a task's
reward) and below the roles and entry points, which call :func:`ensure_model` before anything loads the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gspo_async.config import Config

log = logging.getLogger(__name__)


def ensure_model(cfg: Config) -> Path:
    """The model directory, building the tiny local model there first when it is missing and
    ``model.build_tiny_if_missing`` allows it."""
    path = Path(cfg.model.path)
    if not (path / "config.json").is_file() and cfg.model.build_tiny_if_missing:
        from gspo_async.bootstrap.tiny import build_tiny  # only when building: it pulls in the tokenizer trainer

        log.info("building the tiny local model at %s (no hub access) ...", path)
        build_tiny(path, seed=cfg.seed)
    return path
