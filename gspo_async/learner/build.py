"""Building the learner's trainer, once, for every rank.

Rank 0 and the DeepSpeed follower ranks must build the same model, backend and trainer in the same order (each
backend constructor may run collectives), so both call :func:`build_trainer` and :func:`restore_trainer`; there
is no second copy to keep in lockstep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from gspo_async.config import Config
from gspo_async.learner.backends import LearnerBackend, build_backend
from gspo_async.learner.backends.precision import master_dtype
from gspo_async.learner.checkpoint import Checkpoint, load_trainer_state
from gspo_async.learner.trainer import Trainer
from gspo_async.models.loading import load_model_and_tokenizer

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tiny_meta.json")


def model_files(path: Path) -> dict[str, bytes]:
    """Small files that let a remote actor rebuild the architecture and tokenizer (weights come by broadcast)."""
    return {name: (path / name).read_bytes() for name in MODEL_FILES if (path / name).is_file()}


@dataclass
class TrainerParts:
    """What :func:`build_trainer` makes: the policy, its tokenizer, the backend that steps it, and the trainer."""

    model: torch.nn.Module
    tokenizer: Any
    backend: LearnerBackend
    trainer: Trainer


def build_trainer(cfg: Config, ckpt_path: Optional[Path] = None) -> TrainerParts:
    """Load the policy (from checkpoint directory `ckpt_path` when given, else ``cfg.model.path``), the frozen
    reference model when a KL term needs it (always the starting model), the backend and the trainer.

    Every rank of the learner calls this, in the same order relative to its other collectives.
    """
    dtype = master_dtype(cfg)  # fp32 master weights under learner.precision: mixed; model.dtype is autocast's
    model_dir = Path(cfg.model.path)
    model, tokenizer = load_model_and_tokenizer(Path(ckpt_path) / "model" if ckpt_path else model_dir,
                                                dtype=dtype, device=cfg.learner.device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref_model = None
    if cfg.use_kl_loss or cfg.add_token_level_kl:
        ref_model, _ = load_model_and_tokenizer(model_dir, dtype=dtype, device=cfg.learner.device)
        ref_model.requires_grad_(False)
    backend = build_backend(cfg, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TrainerParts(model, tokenizer, backend, Trainer(cfg, backend, pad_id, ref_model))


def restore_trainer(parts: TrainerParts, ckpt: Checkpoint, distributed: bool) -> dict[str, Any]:
    """Load the optimiser, running reward statistics and sampling generator saved in `ckpt` (and DeepSpeed's
    partitioned state when `distributed`); returns the whole trainer state (rank 0 also restores its RNG)."""
    state = load_trainer_state(ckpt)
    parts.backend.load_state_dict(state["engine"])
    if distributed:
        parts.backend.load(ckpt.path / "deepspeed")
    parts.trainer.running.load_state_dict(state["running"])
    parts.trainer.generator.set_state(state["generator"])
    return state
