"""vLLM worker extension: loads full (name, tensor) weights that the actor process hands to vLLM's workers.

vLLM runs its model in worker processes the actor cannot touch directly. With ``worker_extension_cls`` set to
``gspo_async.engines.vllm_worker.GSPOWorkerExtension`` every worker gains the ``gspo_*`` methods below, which
the actor calls through ``AsyncLLM.collective_rpc`` (the method runs on every worker, between engine steps). Two
payload encodings travel through that RPC, both plain msgpack types (vLLM serialises RPC arguments with msgpack):

- host: a list of (name, dtype name, shape, raw bytes) per tensor; works for any tensor-parallel size, every worker
  receives the full tensors and vLLM's loader keeps its own shard.
- ipc:  pickled CUDA IPC handles of tensors living in the actor process on the same GPU (no copy through the
  host; tensor-parallel size 1 only, since the handles name one device).

Loading goes through vLLM's layerwise reload lifecycle (``initialize_layerwise_reload`` -> ``model.load_weights``
-> ``finalize_layerwise_reload``), never a bare ``load_weights``: the lifecycle re-runs the per-layer weight
processing (fused qkv/gate_up, quantisation, MoE repacking) and copies the result back into the storage captured by
CUDA graphs. Names are Hugging Face checkpoint names (what ``model.named_parameters()`` of the learner's HF model
gives). Between begin and finish the model is partly on the meta device, so the caller must pause generation first.

Like vLLM's own worker, every load and finalise runs inside ``torch.device(worker.device)`` and ends with a device
synchronise: the RPC returns only once the copies have landed, so the actor may then free or reuse the tensors it
shared by IPC handle.

This module imports vLLM only inside the methods: it is imported by the worker processes of a CUDA machine, and by
the CPU test double (``gspo_async.testing``), which runs these methods unchanged over stand-ins of the vLLM
functions they import.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import torch

EXTENSION_CLS = f"{__name__}.GSPOWorkerExtension"


# ------------------------------------------------------------------------------------------------------------------
# Payload encoding (used on both sides of collective_rpc)
# ------------------------------------------------------------------------------------------------------------------


def encode_host(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[Any]]:
    """[(name, tensor)] -> [[name, dtype name, shape, bytes]] (plain msgpack types; tensors are copied to the CPU)."""
    out = []
    for name, t in named:
        t = t.detach()
        cpu = t.to("cpu").contiguous().reshape(-1)
        raw = cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b""
        out.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), raw])
    return out


def decode_host(payload: Iterable[Any], device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Inverse of `encode_host`, lazily (one tensor alive at a time besides the payload), moved to `device`."""
    for name, dtype_name, shape, raw in payload:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"weight {name!r}: unknown dtype {dtype_name!r}")
        if len(raw):
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
        else:
            flat = torch.empty(0, dtype=dtype)
        yield name, flat.reshape(list(shape)).to(device)


def encode_ipc(named: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """Pickled CUDA IPC handles of CUDA tensors. The caller keeps the tensors alive until the RPC returns and has
    synchronised the stream that produced them."""
    from torch.multiprocessing.reductions import reduce_tensor

    handles = []
    for name, t in named:
        if t.device.type != "cuda":
            raise ValueError(f"weight {name!r} is on {t.device}: the ipc transport shares CUDA tensors only "
                             "(use weight_transport: host for CPU tensors)")
        handles.append((name, reduce_tensor(t.detach().contiguous())))
    return pickle.dumps(handles)


IPC_DEVICE_ARG = 6  # position of the device index in the arguments of torch's rebuild_cuda_tensor


def on_device(rebuild: Any, args: tuple, device: torch.device) -> tuple:
    """The rebuild arguments of a CUDA IPC handle with the device index replaced by `device`'s: the actor and the
    worker may number the same GPU differently (CUDA_VISIBLE_DEVICES), so the worker opens the handle on its own
    device index, as vLLM's IPC weight consumer does. Handles of other kinds pass unchanged."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if rebuild is not rebuild_cuda_tensor or device.type != "cuda":
        return tuple(args)
    out = list(args)
    out[IPC_DEVICE_ARG] = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(out)


def decode_ipc(payload: bytes, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Open the IPC handles of `encode_ipc` on `device` (payload comes from our own actor process, same GPU)."""
    for name, (rebuild, args) in pickle.loads(payload):
        yield name, rebuild(*on_device(rebuild, args, device))


# ------------------------------------------------------------------------------------------------------------------
# The extension
# ------------------------------------------------------------------------------------------------------------------


class GSPOWorkerExtension:
    """Mixed into every vLLM worker (``self`` is the worker: ``model_runner``, ``model_config``, ``vllm_config``,
    ``device`` come from it). vLLM appends the extension to the worker's bases and, at worker start, asserts that
    the extension defines no attribute the worker class already has (an AssertionError naming the attribute), so
    every name here carries a ``gspo`` prefix."""

    # -- what the RPCs share ----------------------------------------------------------------------------------------

    def _gspo_model(self) -> Any:
        runner = self.model_runner  # type: ignore[attr-defined]
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def _gspo_layerwise(self) -> tuple[Any, Any]:
        """(initialize(model), finalize(model, model_config)) of vLLM's layerwise reload."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        return initialize_layerwise_reload, finalize_layerwise_reload

    def _gspo_config_scope(self) -> contextlib.AbstractContextManager:
        # vLLM < 0.27 runs weight RPCs without its config context; some kernels' post-processing needs it.
        try:
            from vllm.config import set_current_vllm_config
        except ImportError:
            return contextlib.nullcontext()
        return set_current_vllm_config(self.vllm_config)  # type: ignore[attr-defined]

    def _gspo_device(self) -> torch.device:
        return torch.device(getattr(self, "device", "cpu"))

    @contextlib.contextmanager
    def _gspo_loading(self) -> Iterator[None]:
        """vLLM's config scope and this worker's device around a loader call, then a device synchronise, as vLLM's
        worker does around its own reloads: tensors the loader creates land on this GPU, and the RPC returns only
        once the queued copies from the source tensors (IPC-shared by the actor) are done."""
        device = self._gspo_device()
        with self._gspo_config_scope(), torch.device(device):
            yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # -- RPC methods ------------------------------------------------------------------------------------------------

    def gspo_begin_reload(self) -> None:
        """Start a reload: every layer moves to the meta device until all its weights have arrived."""
        if getattr(self, "_gspo_reloading", False):
            raise RuntimeError("gspo_begin_reload: a reload is already active; finish (or restart the engine) first")
        initialize, _ = self._gspo_layerwise()
        with self._gspo_loading():
            initialize(self._gspo_model())
        self._gspo_reloading = True
        self._gspo_loaded = 0

    def _gspo_feed(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        if not getattr(self, "_gspo_reloading", False):
            raise RuntimeError("weights arrived outside a reload: call gspo_begin_reload first")
        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for item in weights:
                count += 1
                yield item

        with self._gspo_loading():
            self._gspo_model().load_weights(counted())
        self._gspo_loaded += count
        return count

    def gspo_load_host(self, payload: list[list[Any]]) -> int:
        """Load one chunk of `encode_host` tensors; returns how many tensors were fed to the loader."""
        return self._gspo_feed(decode_host(payload, self._gspo_device()))

    def gspo_load_ipc(self, payload: bytes) -> int:
        """Load one chunk of `encode_ipc` handles; returns how many tensors were fed to the loader."""
        return self._gspo_feed(decode_ipc(payload, self._gspo_device()))

    def gspo_finish_reload(self) -> int:
        """Process the layers still pending and leave reload mode; returns the number of tensors loaded."""
        if not getattr(self, "_gspo_reloading", False):
            raise RuntimeError("gspo_finish_reload without gspo_begin_reload")
        _, finalize = self._gspo_layerwise()
        with self._gspo_loading():
            finalize(self._gspo_model(), self.model_config)  # type: ignore[attr-defined]
        self._gspo_reloading = False
        return self._gspo_loaded

    def gspo_state_dict(self) -> list[list[Any]]:
        """This worker's parameters as `encode_host` records (vLLM's internal names: fused qkv_proj, shards)."""
        return encode_host(self._gspo_model().named_parameters())
