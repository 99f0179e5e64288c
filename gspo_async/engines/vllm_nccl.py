"""vLLM's own NCCL weight transfer (`actor.vllm.weight_transport: nccl`, experimental): the learner broadcasts
straight into vLLM's workers over vLLM's weight-transfer engine, and the actor process never holds the weights.

Two ends:
  `VLLMWeightSender`       the learner's end (rank 0): forms the group and broadcasts each version.
  `NCCLTransferMixin`      the actor's end, mixed into `VLLMEngine`: `join_weight_group` once, `receive_weights`
                           per version, inside the engine's pause -> start -> transfer -> finish -> resume sequence.

Experimental: the learner and actor loops do not exchange the rendezvous and per-version messages yet, so only
tests (over the CPU test double, gloo standing in for NCCL) and tools call this path; the weight path the actor
loop runs is `VLLMEngine.apply_weights` (docs/vllm.md, "Transports"). It needs the learner and each actor on
different GPUs (NCCL allows one rank per GPU) and, on vLLM < 0.30, vLLM installed in the learner too (the
rendezvous passes vLLM objects).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from gspo_async.engines.vllm_api import (PACKED_BUFFER_BYTES, PACKED_NUM_BUFFERS, VLLMApi, WeightSyncTimeout,
                                         load_vllm_api)


def weight_metadata(named: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> dict[str, list]:
    """{'names', 'dtype_names', 'shapes'} in sending order: what both ends of an NCCL update must agree on."""
    items = named.items() if isinstance(named, Mapping) else named
    meta: dict[str, list] = {"names": [], "dtype_names": [], "shapes": []}
    for name, t in items:
        meta["names"].append(name)
        meta["dtype_names"].append(str(t.dtype).removeprefix("torch."))
        meta["shapes"].append(list(t.shape))
    return meta


# ------------------------------------------------------------------------------------------------------------------
# Actor side
# ------------------------------------------------------------------------------------------------------------------


class NCCLTransferMixin:
    """`join_weight_group` and `receive_weights` of `VLLMEngine` (the class this is mixed into provides `cfg`,
    `api`, `features`, `llm`, `_loop`, `_update`, `_step`, `_bounded` and `_set_label`)."""

    cfg: Any  # gspo_async.config.VLLMConfig
    api: VLLMApi
    features: Any  # VLLMFeatures
    llm: Any
    _loop: Any
    _packing: dict[str, Any]  # packed settings sent with every update (vLLM < 0.28), set by join_weight_group

    def join_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int, *,
                          packed: bool = False, packed_buffer_size_bytes: int = PACKED_BUFFER_BYTES,
                          packed_num_buffers: int = PACKED_NUM_BUFFERS) -> None:
        """Join the learner's NCCL weight group (ranks rank_offset .. rank_offset + TP - 1 of world_size).

        Call it while the learner runs `VLLMWeightSender.connect()` (both block until every rank joined); the
        packed settings must equal the sender's (`VLLMWeightSender.actor_init_info` gives all of these).
        """
        if self.cfg.weight_transport != "nccl":
            raise ValueError("join_weight_group needs actor.vllm.weight_transport: nccl (the engine was built for "
                             f"{self.cfg.weight_transport!r}, without vLLM's weight-transfer engine)")
        if rank_offset < 1 or rank_offset + self.cfg.tensor_parallel_size > world_size:
            raise ValueError(f"rank_offset={rank_offset} with tensor_parallel_size={self.cfg.tensor_parallel_size} "
                             f"does not fit world_size={world_size} (the learner is rank 0)")
        packing = {"packed": bool(packed), "packed_buffer_size_bytes": int(packed_buffer_size_bytes),
                   "packed_num_buffers": int(packed_num_buffers)}
        info = {"master_address": master_address, "master_port": int(master_port), "rank_offset": int(rank_offset),
                "world_size": int(world_size)}
        if self.features.packed_in_init:
            info.update(packing)
        self._packing = {} if self.features.packed_in_init else packing

        async def join() -> None:
            request = self.api.init_request(info)
            await self._bounded("init_weight_transfer_engine", self.llm.init_weight_transfer_engine(request))

        self._loop.call(join())

    def receive_weights(self, metadata: Mapping[str, list], version: int) -> None:
        """One update over vLLM's NCCL group, while the learner runs `VLLMWeightSender.send` with tensors in
        exactly `metadata`'s order (`weight_metadata`). Pauses, loads, resumes like `apply_weights`."""
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        names, dtypes, shapes = (list(metadata[k]) for k in ("names", "dtype_names", "shapes"))
        if not names or not len(names) == len(dtypes) == len(shapes):
            raise ValueError("metadata needs equally long, non-empty 'names', 'dtype_names' and 'shapes'")
        update_info = {"names": names, "dtype_names": dtypes, "shapes": [list(s) for s in shapes], **self._packing}
        nbytes = sum(torch.Size(s).numel() * torch.empty(0, dtype=getattr(torch, d)).element_size()
                     for d, s in zip(dtypes, shapes))
        llm, f = self.llm, self.features

        async def start() -> None:
            if f.start_finish:
                call = llm.start_weight_update(is_checkpoint_format=True) if f.start_takes_format else \
                    llm.start_weight_update()
                await self._step("start_weight_update", call, version)

        async def transfer() -> None:
            await self._step("update_weights", llm.update_weights(self.api.update_request(update_info)), version)

        async def finish() -> None:
            if f.start_finish:
                call = llm.finish_weight_update(weight_version=str(version)) if f.finish_takes_version else \
                    llm.finish_weight_update()
                await self._step("finish_weight_update", call, version)
            if not f.finish_takes_version:
                await self._set_label(version)

        self._loop.call(self._update(version, start, transfer, finish, nbytes))


# ------------------------------------------------------------------------------------------------------------------
# Learner side of weight_transport: nccl
# ------------------------------------------------------------------------------------------------------------------


class VLLMWeightSender:
    """The learner's end (rank 0) of vLLM's NCCL weight transfer to one or more vLLM actors.

    Rendezvous: the learner picks `master_address:master_port` (reachable from the actors' GPUs) and
    world_size = 1 + sum of the actors' tensor_parallel_size. It hands each actor `actor_init_info(rank_offset)`
    over the control channel (actor i: rank_offset = 1 + sum of the TP sizes before it); then, concurrently,
    the learner calls `connect()` and each actor `VLLMEngine.join_weight_group(**info)`. vLLM's rendezvous
    store is hosted by rank 0, here.
    Per version: the learner tells each actor to call `VLLMEngine.receive_weights(metadata, version)` and calls
    `send(named_tensors)` at the same time; all members of the group must take part in every send.

    packed: None picks vLLM's packed transfer only where it is safe (0.29+, see docs/vllm.md); both ends must
    use the same packed settings. Every wait is bounded by `timeout_s`; NCCL itself has no timeout, so after a
    `WeightSyncTimeout` the group (and possibly this GPU's stream) is unusable: rebuild it or restart.
    """

    def __init__(self, master_address: str, master_port: int, world_size: int, *, packed: bool | None = None,
                 packed_buffer_size_bytes: int = PACKED_BUFFER_BYTES, packed_num_buffers: int = PACKED_NUM_BUFFERS,
                 timeout_s: float = 60.0, api: VLLMApi | None = None) -> None:
        if world_size < 2:
            raise ValueError(f"world_size={world_size}: the learner is rank 0, so at least one actor rank is needed")
        self.api = api if api is not None else load_vllm_api()
        self.features = self.api.features
        self.master_address, self.master_port, self.world_size = master_address, int(master_port), int(world_size)
        self.packed = self.features.packed_is_safe if packed is None else bool(packed)
        self.packed_buffer_size_bytes = int(packed_buffer_size_bytes)
        self.packed_num_buffers = int(packed_num_buffers)
        self.timeout_s = float(timeout_s)
        self.group: Any = None

    def actor_init_info(self, rank_offset: int) -> dict[str, Any]:
        """Keyword arguments for `VLLMEngine.join_weight_group` of the actor whose first rank is `rank_offset`."""
        return {"master_address": self.master_address, "master_port": self.master_port, "rank_offset": rank_offset,
                "world_size": self.world_size, "packed": self.packed,
                "packed_buffer_size_bytes": self.packed_buffer_size_bytes,
                "packed_num_buffers": self.packed_num_buffers}

    def connect(self) -> None:
        """Form the group as rank 0; returns once every actor rank joined (or raises WeightSyncTimeout)."""
        info = {"master_address": self.master_address, "master_port": self.master_port,
                "world_size": self.world_size}
        self.group = _run_bounded(lambda: self.api.trainer_init(info), self.timeout_s,
                                  f"forming the vLLM weight group at {self.master_address}:{self.master_port}")

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> float:
        """Broadcast every tensor, in order (the actors' metadata order). Returns seconds taken."""
        if self.group is None:
            raise RuntimeError("send() before connect()")
        items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        cuda = any(t.device.type == "cuda" for _, t in items)

        def run() -> None:
            if cuda:
                torch.cuda.synchronize()  # the optimiser step must have landed
            if self.packed and self.api.packed_producer is not None:
                self.api.packed_producer(iterator=iter(items), group=self.group, src=0,
                                         post_iter_func=lambda item: item[1],
                                         buffer_size_bytes=self.packed_buffer_size_bytes,
                                         num_buffers=self.packed_num_buffers)
            else:
                stream = torch.cuda.current_stream() if cuda else None
                for _, t in items:
                    self.group.broadcast(t.detach().contiguous(), src=0, stream=stream)
            if cuda:
                torch.cuda.synchronize()  # vLLM <= 0.28's packed producer returns before its streams drain

        t0 = time.monotonic()
        _run_bounded(run, self.timeout_s, f"sending {len(items)} tensors to the vLLM weight group")
        return time.monotonic() - t0

    def close(self) -> None:
        self.group = None


def _run_bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run fn in a daemon thread; raise WeightSyncTimeout if it is not done in timeout_s (the thread is left
    behind: a blocked NCCL/gloo call cannot be interrupted)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="vllm-weight-sender", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WeightSyncTimeout(f"{what} did not finish within {timeout_s:g} s (an actor missing or dead?); the "
                                "group is unusable: form a new one, or restart if the GPU stream is stuck")
    if "error" in box:
        raise box["error"]
    return box.get("value")
