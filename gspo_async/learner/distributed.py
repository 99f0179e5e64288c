"""Multi-rank learner plumbing: process group setup, the rank-0 command channel, the follower loop.

Rank 0 is the learner proper (coordinator, actors, weight broadcast, checkpoints). Ranks > 0 hold their share of
the ZeRO state and only follow: every collective the engine runs (a training step, a ZeRO-3 weight gather, a
DeepSpeed checkpoint) must be entered by every rank in the same order, so rank 0 announces each one with a command
before it starts it, and the followers run :func:`follower_loop`::

    rank 0                                         ranks > 0
    broadcast_batch(groups); trainer.train_step()  -> follower_loop: trainer.train_step(groups)
    announce_weights(); engine.broadcast_tensors() -> for _ in engine.broadcast_tensors(): pass
    announce_export(); engine.export_state_dict()  -> engine.export_state_dict()   (ZeRO-3 gathers)
    announce_save(path); engine.save(path)         -> engine.save(path)
    broadcast_batch(None)                          -> follower_loop returns

Commands travel as pickled objects on a gloo group of their own whose timeout is long (rank 0 may wait minutes
for rollouts between two commands); the training collectives keep the default group and its normal timeout.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Optional

import torch
import torch.distributed as dist

from gspo_async.protocol.messages import RolloutGroup

TRAIN, WEIGHTS, EXPORT, SAVE, STOP = "train", "weights", "export", "save", "stop"
COMMANDS = (TRAIN, WEIGHTS, EXPORT, SAVE, STOP)

# Followers block on the command channel while rank 0 waits for rollouts, evaluates or publishes weights.
COMMAND_TIMEOUT = datetime.timedelta(days=7)
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_command_group: Optional[dist.ProcessGroup] = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_learner_distributed(cfg) -> tuple[int, int]:
    """Join the learner's process group; returns (rank, world_size). Idempotent.

    Reads the torchrun / ``deepspeed`` launcher variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). A process started without a launcher becomes a world of one on a free loopback port (DeepSpeed
    would otherwise try MPI discovery and fail without mpi4py). Backend: NCCL when ``cfg.learner.device`` is a
    CUDA device (and the current device becomes ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    global _command_group
    on_gpu = str(cfg.learner.device).startswith("cuda")
    env = os.environ
    if not dist.is_initialized():
        if not any(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            env.setdefault("MASTER_ADDR", "127.0.0.1")
            env.setdefault("MASTER_PORT", str(_free_port()))
        missing = [k for k in LAUNCHER_ENV if k not in env]
        if missing:
            raise ValueError(f"the learner's process group needs {', '.join(LAUNCHER_ENV)}; {missing} are unset. "
                             "Start the ranks with `torchrun --nproc_per_node=N ...` (or the deepspeed launcher), "
                             "or set none of them to run a single rank")
        if on_gpu:
            torch.cuda.set_device(int(env["LOCAL_RANK"]))  # "cuda" now means this rank's own GPU
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method="env://", rank=int(env["RANK"]),
                                world_size=int(env["WORLD_SIZE"]))
    env.setdefault("LOCAL_RANK", str(dist.get_rank()))  # DeepSpeed asserts it even on a ready process group
    if _command_group is None:
        _command_group = dist.new_group(backend="gloo", timeout=COMMAND_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def _exchange(command: Optional[tuple[str, Any]], src: int) -> tuple[str, Any]:
    if _command_group is None:
        raise RuntimeError("call init_learner_distributed(cfg) on every rank before exchanging commands")
    box = [command]
    dist.broadcast_object_list(box, src=src, group=_command_group)
    kind, payload = box[0]
    if kind not in COMMANDS:
        raise RuntimeError(f"unknown learner command {kind!r} (ranks running different code versions?)")
    return kind, payload


def send_command(kind: str, payload: Any = None, src: int = 0) -> tuple[str, Any]:
    """On `src`: send (kind, payload) to every rank. On the others: receive it. Collective on every rank."""
    if dist.get_rank() == src and kind not in COMMANDS:
        raise ValueError(f"command {kind!r} is not one of {COMMANDS}")
    return _exchange((kind, payload) if dist.get_rank() == src else None, src)


def broadcast_batch(groups: Optional[list[RolloutGroup]], src: int = 0) -> Optional[list[RolloutGroup]]:
    """Rank `src` sends the training batch's groups (None = stop) to every rank; every rank returns them.

    On the other ranks the argument is ignored, and a command other than train/stop is an error there (use
    :func:`follower_loop`, which handles every command).
    """
    if dist.get_rank() == src:
        return _exchange((STOP, None) if groups is None else (TRAIN, groups), src)[1]
    kind, payload = _exchange(None, src)
    if kind not in (TRAIN, STOP):
        raise RuntimeError(f"expected a training batch or stop from rank {src}, got command {kind!r}")
    return payload


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank `src`'s `obj` (any picklable value) on every rank, e.g. the checkpoint directory all ranks resume
    from. Use it only where no command is expected (before the followers enter :func:`follower_loop`)."""
    if _command_group is None:
        raise RuntimeError("call init_learner_distributed(cfg) on every rank before broadcasting")
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_command_group)
    return box[0]


def announce_weights(src: int = 0) -> None:
    """Rank `src`, before iterating ``engine.broadcast_tensors()``: the followers join the (ZeRO-3) gathers."""
    send_command(WEIGHTS, None, src)


def announce_export(src: int = 0) -> None:
    """Rank `src`, before ``engine.export_state_dict()``: the followers join the (ZeRO-3) gathers of the export."""
    send_command(EXPORT, None, src)


def announce_save(path: str | os.PathLike, src: int = 0) -> None:
    """Rank `src`, before ``engine.save(path)``: the followers write their partitions into the same `path`."""
    send_command(SAVE, os.fspath(path), src)


def follower_loop(trainer, stop=None) -> int:
    """What ranks > 0 run until rank 0 sends stop; returns the number of training steps taken.

    `trainer` is this rank's :class:`~gspo_async.learner.trainer.Trainer` (same config, seed and initial
    weights as rank 0's, so its mini-batch permutations match). `stop` is this rank's
    :class:`~gspo_async.process.StopFlag`, or None: it is installed so that the first SIGINT/SIGTERM (torchrun
    forwards it to every rank) does not kill the follower in the middle of rank 0's final checkpoint; the
    follower leaves only on rank 0's stop command (a second SIGINT still exits at once).
    """
    if stop is not None:
        stop.install()
    engine = trainer.engine
    steps = 0
    while True:
        kind, payload = _exchange(None, src=0)
        if kind == TRAIN:
            trainer.train_step(payload)
            steps += 1
        elif kind == WEIGHTS:
            for _ in engine.broadcast_tensors():
                pass
        elif kind == EXPORT:
            engine.export_state_dict()
        elif kind == SAVE:
            engine.save(payload)
        else:
            return steps


def close_learner_distributed() -> None:
    """Destroy this rank's process group, if any, before the interpreter exits: a gloo or NCCL group left to
    interpreter teardown can abort the process ("terminate called without an active exception", SIGABRT) after a
    run that succeeded. Local to this rank (no collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
