"""The worker side of the CPU vLLM test double: vLLM's model and GPU-worker surface, the stand-in (gloo) NCCL
weight group, and the vLLM functions that `GSPOWorkerExtension` imports, patched for the CPU.

The production worker extension (`engines/vllm_worker.py`) runs unchanged here: the double builds its worker class
the way vLLM does (the extension appended to the worker's bases, after vLLM's name-clash check), and while an RPC
runs it puts stand-ins for the modules the extension's hooks import (`vllm.model_executor.model_loader.reload`,
`vllm.config`) into `sys.modules`. The stand-ins fail loudly where real vLLM would misbehave silently: loading
outside a reload, loading or finalising outside `torch.device(worker.device)` (vLLM's own worker loads there), or
outside the vLLM config scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.machinery
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import msgpack
import torch

COLLECTIVE_TIMEOUT_S = 20.0  # gloo timeout of the stand-in weight group (a blocked collective ends after this)


# ------------------------------------------------------------------------------------------------------------------
# Stand-in NCCL group (gloo), both ends
# ------------------------------------------------------------------------------------------------------------------


class _GlooGroup:
    """PyNcclCommunicator's `broadcast(tensor, src, stream)` over a gloo group built on a TCPStore."""

    def __init__(self, host: str, port: int, rank: int, world_size: int):
        from gspo_async.weights.groups import make_group

        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        self.store = torch.distributed.TCPStore(host, port, None, rank == 0, timeout, wait_for_workers=False)
        prefix = torch.distributed.PrefixStore("vllm-fake-weights", self.store)
        self.group = make_group("gloo", prefix, rank, world_size, COLLECTIVE_TIMEOUT_S, torch.device("cpu"),
                                bind_host="127.0.0.1")

    def broadcast(self, tensor: torch.Tensor, src: int = 0, stream: Any = None) -> None:
        from gspo_async.weights.groups import broadcast, wait_work

        if src != 0:
            raise ValueError("the weight group broadcasts from rank 0 only")
        wait_work(broadcast(self.group, tensor), COLLECTIVE_TIMEOUT_S, "gloo")


def fake_trainer_init(info: dict[str, Any]) -> _GlooGroup:
    """Learner end (rank 0) of the stand-in weight group; hosts the rendezvous store like vLLM's trainer_init."""
    return _GlooGroup(info["master_address"], int(info["master_port"]), 0, int(info["world_size"]))


async def in_thread(fn: Any) -> Any:
    """Run a blocking call in a daemon thread (a stuck collective must not keep the process alive at exit)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(method: str, value: Any) -> None:
        if not fut.done():
            getattr(fut, method)(value)

    def target() -> None:
        try:
            value, method = fn(), "set_result"
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
            value, method = err, "set_exception"
        with contextlib.suppress(RuntimeError):  # loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(settle, method, value)

    threading.Thread(target=target, name="vllm-fake-collective", daemon=True).start()
    return await fut


# ------------------------------------------------------------------------------------------------------------------
# Worker and model
# ------------------------------------------------------------------------------------------------------------------


class FakeModel:
    """vLLM's model surface over an HF causal LM: `load_weights(iterable of (HF name, tensor))`.

    reloading: between the start and the end of a reload (layerwise, or vLLM's own weight transfer); the engine
    refuses to take a step then. layerwise: inside the extension's layerwise reload, where vLLM's loader needs its
    config scope (`config_scopes` > 0)."""

    def __init__(self, hf_model: Any, device: torch.device):
        self.hf = hf_model
        self.device = torch.device(device)
        self.reloading = False
        self.layerwise = False
        self.config_scopes = 0
        self.loads = 0  # load_weights calls, for tests

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.hf.named_parameters()

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        require_device(self.device, "load_weights")
        if self.layerwise and self.config_scopes < 1:
            raise RuntimeError("load_weights during a layerwise reload ran outside set_current_vllm_config: vLLM "
                               "0.24's weight processing needs its config scope")
        params = dict(self.hf.named_parameters())
        loaded = set()
        tied = bool(getattr(self.hf.config, "tie_word_embeddings", False))
        for name, t in weights:
            if tied and name == "lm_head.weight":  # vLLM skips the alias of tied embeddings
                continue
            if name not in params:
                raise KeyError(f"load_weights: the model has no parameter {name!r}")
            if tuple(params[name].shape) != tuple(t.shape):
                raise ValueError(f"load_weights: {name} has shape {tuple(t.shape)}, "
                                 f"the model {tuple(params[name].shape)}")
            params[name].copy_(t)
            loaded.add(name)
        self.loads += 1
        return loaded


def device_context() -> torch.device | None:
    """The device of the innermost active `with torch.device(...)` block, or None outside any."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    for mode in reversed(_get_current_function_mode_stack()):
        if isinstance(mode, DeviceContext):
            return torch.device(mode.device)
    return None


def require_device(device: torch.device, what: str) -> None:
    """Fail unless running inside `torch.device(device)`, where vLLM's own worker loads and finalises weights."""
    got = device_context()
    if got != device:
        raise RuntimeError(f"{what} ran under torch.device({got}), not the worker's device {device}: vLLM's worker "
                           "loads and finalises weights inside `with torch.device(self.device)` so that tensors the "
                           "loader creates land on the worker's GPU")


# ------------------------------------------------------------------------------------------------------------------
# Stand-ins for the vLLM functions the worker extension imports
# ------------------------------------------------------------------------------------------------------------------

RELOAD_MODULE = "vllm.model_executor.model_loader.reload"
CONFIG_MODULE = "vllm.config"
_PARENTS = ("vllm", "vllm.model_executor", "vllm.model_executor.model_loader")
_STAND_IN_LOCK = threading.RLock()


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def _stand_in_modules(model: FakeModel) -> dict[str, types.ModuleType]:
    """vLLM's layerwise reload and config scope, over `model`, with the checks real vLLM does not make."""

    def initialize_layerwise_reload(m: FakeModel) -> None:
        require_device(model.device, "initialize_layerwise_reload")
        m.reloading = m.layerwise = True

    def finalize_layerwise_reload(m: FakeModel, model_config: Any) -> None:
        require_device(model.device, "finalize_layerwise_reload")
        if not m.layerwise:
            raise RuntimeError("finalize_layerwise_reload without initialize_layerwise_reload")
        if m.config_scopes < 1:
            raise RuntimeError("finalize_layerwise_reload ran outside set_current_vllm_config")
        m.reloading = m.layerwise = False

    @contextlib.contextmanager
    def set_current_vllm_config(vllm_config: Any, check_compile: bool = False,
                                prefix: str | None = None) -> Iterator[None]:
        model.config_scopes += 1
        try:
            yield
        finally:
            model.config_scopes -= 1

    modules = {name: _module(name) for name in _PARENTS}
    modules[RELOAD_MODULE] = _module(RELOAD_MODULE, initialize_layerwise_reload=initialize_layerwise_reload,
                                     finalize_layerwise_reload=finalize_layerwise_reload)
    modules[CONFIG_MODULE] = _module(CONFIG_MODULE, set_current_vllm_config=set_current_vllm_config)
    return modules


@contextlib.contextmanager
def vllm_stand_ins(model: FakeModel) -> Iterator[None]:
    """Put the stand-in modules into `sys.modules` for the duration of one worker RPC (the extension imports
    them inside its methods), then restore what was there. Parent packages are only added where absent, so a
    machine with vLLM installed keeps its own `vllm` package."""
    modules = _stand_in_modules(model)
    with _STAND_IN_LOCK:
        saved = {name: sys.modules.get(name) for name in modules}
        for name, module in modules.items():
            if name not in _PARENTS or saved[name] is None:
                sys.modules[name] = module
        try:
            yield
        finally:
            for name, module in modules.items():
                if sys.modules.get(name) is module:
                    if saved[name] is None:
                        del sys.modules[name]
                    else:
                        sys.modules[name] = saved[name]  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------------------------
# The worker
# ------------------------------------------------------------------------------------------------------------------


class FakeWorker:
    """The worker surface: model_runner.model, device, configs, plus the weight-transfer methods vLLM's GPU worker
    implements. The configured worker extension is appended to its bases (`build_worker`), as vLLM does."""

    def __init__(self, model: FakeModel, version: tuple[int, int, int]):
        self.model_runner = type("ModelRunner", (), {"model": model})()
        self.device = model.device
        self.model_config = None
        self.vllm_config = None
        self._version = version
        self._group: _GlooGroup | None = None
        self._update_active = False

    # vLLM's native weight transfer
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        keys = {"master_address", "master_port", "rank_offset", "world_size"}
        if self._version >= (0, 28, 0):
            keys |= {"packed", "packed_buffer_size_bytes", "packed_num_buffers"}
        _check_keys("init_info", init_info, required={"master_address", "master_port", "rank_offset", "world_size"},
                    allowed=keys)
        self._group = _GlooGroup(init_info["master_address"], int(init_info["master_port"]),
                                 int(init_info["rank_offset"]), int(init_info["world_size"]))

    def start_weight_update(self) -> None:
        if self._update_active:
            raise RuntimeError("start_weight_update called while a weight update is already active")
        self.model_runner.model.reloading = True
        self._update_active = True

    def receive(self, update_info: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        keys = {"names", "dtype_names", "shapes"}
        if self._version < (0, 28, 0):
            keys |= {"packed", "packed_buffer_size_bytes", "packed_num_buffers"}
        _check_keys("update_info", update_info, required={"names", "dtype_names", "shapes"}, allowed=keys)
        if self._group is None:
            raise RuntimeError("NCCL weight transfer not initialized: call init_weight_transfer_engine first")
        out = []
        for name, dtype, shape in zip(update_info["names"], update_info["dtype_names"], update_info["shapes"]):
            buf = torch.empty(list(shape), dtype=getattr(torch, dtype))
            self._group.broadcast(buf, src=0)
            out.append((name, buf))
        return out

    def load_received(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        with torch.device(self.device):  # as vLLM's worker does around its loader
            self.model_runner.model.load_weights(weights)

    def finish_weight_update(self) -> None:
        if not self._update_active:
            raise RuntimeError("finish_weight_update without start_weight_update")
        self.model_runner.model.reloading = False
        self._update_active = False


def build_worker(model: FakeModel, version: tuple[int, int, int], worker_extension_cls: str) -> FakeWorker:
    """The worker with `worker_extension_cls` (a qualified class name) appended to its bases, after vLLM's check
    that the extension shares no attribute with the worker class (an AssertionError at worker start in vLLM)."""
    cls: type = FakeWorker
    if worker_extension_cls:
        module, _, name = worker_extension_cls.rpartition(".")
        ext = getattr(importlib.import_module(module), name)
        for attr in dir(ext):
            if attr.startswith("__"):
                continue
            if hasattr(FakeWorker, attr):
                raise AssertionError(f"Worker class {FakeWorker} already has an attribute {attr}, which conflicts "
                                     f"with the worker extension class {ext}.")
        cls = type("Worker", (FakeWorker, ext), {})
    return cls(model, version)


def _check_keys(what: str, info: dict[str, Any], required: set[str], allowed: set[str]) -> None:
    if not isinstance(info, dict) or not required <= set(info) or not set(info) <= allowed:
        raise ValueError(f"Invalid {what}: keys {sorted(info) if isinstance(info, dict) else info!r}, "
                         f"required {sorted(required)}, allowed {sorted(allowed)}")


def round_trip(obj: Any) -> Any:
    """What crosses vLLM's RPC boundary: msgpack (tuples become lists; anything else fails here too)."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)
