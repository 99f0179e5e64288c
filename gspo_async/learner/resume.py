"""Which config a learner runs with: the given file, or on ``--resume`` the run's own saved config.

A resumed run continues with the settings it was started with: ``RUN_DIR/config.yaml`` (written by the learner at
every start) is the base, and only the command-line overrides are applied on top, so they need not be repeated.
The CONFIG file of the command line only locates the run directory (its ``run_dir``, or an override of it).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Optional

from gspo_async.config import Config, load_config
from gspo_async.process import StartupError

log = logging.getLogger(__name__)

SAVED_CONFIG = "config.yaml"


def learner_config(config_path: Optional[str | Path], overrides: list[str], *, resume: bool,
                   start_if_missing: bool = False) -> tuple[Config, bool]:
    """The learner's config and whether it resumes.

    Without `resume`: `config_path` with `overrides`. With it: ``RUN_DIR/config.yaml`` with `overrides` on top
    (``run_dir`` kept where the run was found). A run directory without a saved config is refused, unless
    `start_if_missing` (a restartable job's first start), which starts a fresh run from `config_path`.
    """
    cfg = load_config(config_path, overrides)
    if not resume:
        return cfg, False
    run_dir = Path(cfg.run_dir)
    saved = run_dir / SAVED_CONFIG
    if not saved.is_file():
        if start_if_missing:
            log.info("[learner] --resume: no run in %s yet (no %s); starting a fresh run there", run_dir,
                     SAVED_CONFIG)
            return cfg, False
        raise StartupError(f"--resume: no run to resume in {run_dir} ({saved} does not exist). Check run_dir "
                           "(the config's, or a run_dir=... override), or add --start-if-missing to start a fresh "
                           "run when there is none")
    resumed = load_config(saved, [*overrides, f"run_dir={run_dir}"])
    log.info("[learner] --resume: settings from %s%s", saved,
             f" with {len(overrides)} command-line override(s) on top" if overrides else "")
    return resumed, True


RUN_ID_FILE = "run_id"


def run_identity(run_dir: Path, resume: bool) -> str:
    """The id of the training run in `run_dir`: the saved one when resuming (made afresh if the file is missing),
    a new one otherwise. Actors carry it on their groups, so a group of a finished run is recognised as such."""
    path = Path(run_dir) / RUN_ID_FILE
    if resume and path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    path.write_text(run_id + "\n")
    return run_id
