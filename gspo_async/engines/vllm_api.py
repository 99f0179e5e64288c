"""The vLLM version layer: which calls a vLLM release offers (`VLLMFeatures`), the names the engine resolves from
it (`VLLMApi`), either from the installed vLLM (`load_vllm_api`) or from a test double, and the engine arguments
an actor starts vLLM with (`engine_args`).

vLLM's weight-transfer and pause APIs changed between 0.20 and 0.33 (see docs/vllm.md for the table). Every
version-dependent decision of `engines/vllm.py` and `engines/vllm_nccl.py` reads a `VLLMFeatures` property, so the
table lives in one place and is unit-tested per release. vLLM is imported only inside `load_vllm_api`: this module
imports on machines without vLLM (the CPU CI, the learner).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gspo_async.engines.vllm_worker import EXTENSION_CLS

log = logging.getLogger(__name__)

TESTED_RANGE = ((0, 20), (0, 33))  # minor versions whose APIs this module was written against
PACKED_BUFFER_BYTES = 1 << 30  # vLLM's default packed-transfer buffer
PACKED_NUM_BUFFERS = 2

INSTALL_HINT = (
    "vLLM needs a Linux machine with an NVIDIA GPU (compute capability >= 7.5, driver R580+ for the CUDA 13 "
    "wheels) and cannot run this project's CPU actors. Install it on the GPU machine with "
    "`pip install vllm==0.24.0` (torch 2.11 images) or `uv pip install vllm==0.33.0` (torch 2.14), or from "
    "carried wheels as in tools/gpu/README.md; on a CPU machine use actor.engine: hf."
)


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed or cannot run here."""


class WeightSyncTimeout(TimeoutError):
    """A weight-update step or collective did not finish in time; the engine now needs a full resync."""


class EngineNeedsResync(RuntimeError):
    """A previous weight update failed; generation is refused until a full update succeeds."""



# ------------------------------------------------------------------------------------------------------------------
# Versions and the resolved API
# ------------------------------------------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.24.0+cu130' -> (0, 24, 0); '0.33.0rc1' -> (0, 33, 0)."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"cannot read a vLLM version from {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class VLLMFeatures:
    """What a vLLM version offers, as far as this engine is concerned."""

    version: tuple[int, int, int]

    def _at_least(self, minor: int) -> bool:
        return self.version >= (0, minor, 0)

    @property
    def start_finish(self) -> bool:  # explicit start/finish around update_weights (PR #39212)
        return self._at_least(21)

    @property
    def start_takes_format(self) -> bool:  # start_weight_update(is_checkpoint_format=...) only in 0.21-0.24
        return self._at_least(21) and not self._at_least(25)

    @property
    def finish_takes_version(self) -> bool:
        return self._at_least(27)

    @property
    def packed_in_init(self) -> bool:
        return self._at_least(28)

    @property
    def packed_is_safe(self) -> bool:  # 0.24-0.28 packed transfer strands 2 GiB of allocator cache per sync
        return self._at_least(29)

    @property
    def static_trainer_api(self) -> bool:  # NCCLWeightTransferEngine.trainer_init (moved in 0.25)
        return not self._at_least(25)

    @property
    def weight_versions(self) -> bool:  # CompletionOutput.weight_versions
        return self._at_least(32)

    @property
    def delta_logprobs_by_token_count(self) -> bool:
        """Before 0.29 a DELTA output's logprobs are the request's history sliced as `logprobs[-len(token_ids):]`,
        so an output with no new tokens (the final output of an aborted request) carries the whole history
        (`[-0:]`). The engine takes the tail that matches the tokens on every version; the test double
        reproduces the slicing of the releases it emulates."""
        return not self._at_least(29)


@dataclass
class VLLMApi:
    """The vLLM names the engine uses, resolved once: the real package (`load_vllm_api`) or the CPU test double
    (`gspo_async.testing.vllm_fake.fake_api`, which tests and tools pass as `VLLMEngine(..., api=...)`)."""

    version: str
    make_engine: Callable[[dict[str, Any]], Any]  # engine arguments -> AsyncLLM (called on the engine's loop)
    sampling_params: Callable[..., Any]
    output_kind: Any  # RequestOutputKind
    init_request: Callable[[dict[str, Any]], Any]  # WeightTransferInitRequest(init_info=...)
    update_request: Callable[[dict[str, Any]], Any]  # WeightTransferUpdateRequest(update_info=...)
    weight_transfer_config: Callable[[str], Any]  # WeightTransferConfig(backend=...)
    retryable_errors: tuple[type[BaseException], ...]
    trainer_init: Callable[[dict[str, Any]], Any]  # learner side: init info -> group with .broadcast(t, src, stream)
    packed_producer: Callable[..., None] | None = None

    @property
    def features(self) -> VLLMFeatures:
        return VLLMFeatures(parse_version(self.version))


def load_vllm_api() -> VLLMApi:
    """Import vLLM and resolve the names for its version; raises `VLLMUnavailable` with install steps."""
    try:
        import vllm
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as err:
        raise VLLMUnavailable(f"actor.engine: vllm, but vLLM cannot be imported ({err}). {INSTALL_HINT}") from err
    features = VLLMFeatures(parse_version(vllm.__version__))
    retryable: tuple[type[BaseException], ...] = ()  # before 0.33 requests sent during a pause are queued
    for module in ("vllm.exceptions", "vllm.v1.engine.exceptions"):
        try:
            retryable = (getattr(importlib.import_module(module), "RetryableRequestError"),)
            break
        except (ImportError, AttributeError):
            continue

    def make_engine(kwargs: dict[str, Any]) -> Any:
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    def init_request(info: dict[str, Any]) -> Any:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        return WeightTransferInitRequest(init_info=info)

    def update_request(info: dict[str, Any]) -> Any:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        return WeightTransferUpdateRequest(update_info=info)

    def weight_transfer_config(backend: str) -> Any:
        from vllm.config import WeightTransferConfig

        return WeightTransferConfig(backend=backend)

    def trainer_init(info: dict[str, Any]) -> Any:
        if features.static_trainer_api:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            return NCCLWeightTransferEngine.trainer_init(info)
        from vllm.distributed.weight_transfer import nccl_common

        return _call_with_supported(nccl_common.trainer_init, info, rank=0)

    def packed_producer(**kwargs: Any) -> None:
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        packed_nccl_broadcast_producer(**kwargs)

    return VLLMApi(version=vllm.__version__, make_engine=make_engine, sampling_params=SamplingParams,
                   output_kind=RequestOutputKind, init_request=init_request, update_request=update_request,
                   weight_transfer_config=weight_transfer_config, retryable_errors=retryable,
                   trainer_init=trainer_init, packed_producer=packed_producer)


def _call_with_supported(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn, dropping keyword arguments its signature does not take (APIs moved between versions)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def check_supported(version: tuple[int, int, int]) -> None:
    """Refuse releases older than the tested range (their APIs are missing); warn about newer ones."""
    low, high = TESTED_RANGE
    if version[:2] < low:
        raise VLLMUnavailable(f"vLLM {'.'.join(map(str, version))} is older than {low[0]}.{low[1]}, the oldest "
                              f"release whose pause/resume and weight-transfer APIs this engine uses. {INSTALL_HINT}")
    if version[:2] > high:
        log.warning("vLLM %s is newer than %d.%d, the newest release this engine was written against",
                    ".".join(map(str, version)), *high)


def engine_args(model_dir: str | Path, vllm_config: Any, *, seed: int, load_weights: bool,
                max_model_len: int | None, api: VLLMApi, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments for one actor. `load_weights=False` starts from random ('dummy')
    weights, for actors whose first weights come from the learner."""
    args: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": vllm_config.dtype,
        "seed": int(seed),  # distinct per actor: vLLM's default 0 would correlate the samples of all replicas
        "tensor_parallel_size": vllm_config.tensor_parallel_size,
        "gpu_memory_utilization": vllm_config.gpu_memory_utilization,
        "enforce_eager": vllm_config.enforce_eager,
        "max_model_len": vllm_config.max_model_len or max_model_len,
        "logprobs_mode": vllm_config.logprobs_mode,
        "enable_prefix_caching": True,
        "load_format": "auto" if load_weights else "dummy",
        "worker_extension_cls": EXTENSION_CLS,
        "disable_log_stats": True,
    }
    if vllm_config.weight_transport == "nccl":
        args["weight_transfer_config"] = api.weight_transfer_config("nccl")
    args.update(overrides or {})
    return args
