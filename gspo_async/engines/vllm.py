"""vLLM inference engine: `VLLMEngine` drives vLLM's asynchronous engine (`AsyncLLM`) behind the synchronous
`Engine` interface, and `VLLMWeightSender` is the learner's end of vLLM's own NCCL weight transfer.

Threads. vLLM's API is asyncio; the actor is synchronous. The engine owns one event loop running in a background
thread; `generate` and `apply_weights` submit coroutines to it and block on the result, so a weight thread can call
`apply_weights` while the main thread is inside `generate` (an in-flight update).

Responses. Each of the n responses of a prompt is its own request (not `SamplingParams(n=G)`): a response can be
aborted and resubmitted alone, its weight versions are tracked alone, and vLLM's streaming of n>1 (one child per
output) needs no regrouping. Prefix caching shares the prompt's KV between the G requests, so compute is the same.
Every request carries `cache_salt = gspo-v<version>`, so a new request never reuses KV computed by older weights.

Log-probabilities. Requests ask for `logprobs=0` (the sampled token only) and the engine is built with
`logprobs_mode="processed_logprobs"`: log softmax(logits / T) after temperature. With no truncation (top_p = 1,
top_k = 0, min_p = 0, no penalties, all enforced here) that is exactly the full-softmax log-probability at the
sampling temperature that the learner computes. `raw_logprobs` ignores T and is only accepted at T = 1 (or greedy).
Truncation (top_p < 1 or top_k > 0) is refused: vLLM renormalises over the kept tokens, which breaks the contract.

Weight updates: pause (actor.vllm.update_mode: 'keep' freezes requests with their KV cache, 'abort' ends them and
this engine resubmits prompt + generated tokens after the update, so no response is lost) -> start -> transfer ->
finish -> reset prefix cache -> resume. Every step is bounded by `step_timeout_s`; a step that fails or times out
marks the engine as needing a full resync (generate refuses to run, in-flight generate calls raise) until a full
update succeeds. Three transports:
  host / ipc  `apply_weights(tensors, version)`: full tensors from gspo_async.weights are handed to vLLM's workers
              through the `GSPOWorkerExtension` (vllm_worker.py) and loaded with vLLM's layerwise reload.
  nccl        `join_weight_group(...)` once, then `receive_weights(metadata, version)` per update while the learner
              runs `VLLMWeightSender.send(...)`: vLLM's NCCL weight-transfer engine (init_weight_transfer_engine /
              start_weight_update / update_weights / finish_weight_update); `apply_weights` still works (host/ipc).

vLLM versions (the calls differ; `VLLMFeatures` decides, see docs/vllm.md):
  0.20        pause/resume; NCCL update is one `update_weights` call (no start/finish).
  0.21-0.24   `start_weight_update(is_checkpoint_format=True)` ... `finish_weight_update()`; `packed` in update info;
              learner: `NCCLWeightTransferEngine.trainer_init`. Per-token versions: tracked here.
  0.25-0.27   `start_weight_update()` (no argument); learner: `nccl_common.trainer_init`.
  0.27+       `finish_weight_update(weight_version=...)`, `update_weight_version(...)`.
  0.28+       `packed` moves to the init info.       0.29+  packed NCCL transfer no longer leaks streams.
  0.32+       `CompletionOutput.weight_versions` labels tokens: used instead of our own tracking.
  0.33        `generate` during an abort/wait pause raises `RetryableRequestError` (we wait for resume, then retry).

vLLM is imported lazily; `actor.engine: vllm-fake` runs this same class over the CPU test double in vllm_fake.py.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import inspect
import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_async.engines.base import Engine, Generation, SamplingSettings
from gspo_async.engines.vllm_worker import EXTENSION_CLS, decode_host, encode_host, encode_ipc

log = logging.getLogger(__name__)

TESTED_RANGE = ((0, 20), (0, 33))  # minor versions whose APIs this module was written against
PACKED_BUFFER_BYTES = 1 << 30  # vLLM's default packed-transfer buffer
PACKED_NUM_BUFFERS = 2

INSTALL_HINT = (
    "vLLM needs a Linux machine with an NVIDIA GPU (compute capability >= 7.5, driver R580+ for the CUDA 13 "
    "wheels) and cannot run this project's CPU actors. Install it on the GPU machine with "
    "`pip install vllm==0.24.0` (torch 2.11 images) or `uv pip install vllm==0.33.0` (torch 2.14), or from "
    "carried wheels as in tools/gpu/README.md; on a CPU machine use actor.engine: hf (or vllm-fake for tests)."
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


@dataclass
class VLLMApi:
    """The vLLM names this module uses, resolved once: the real package (`load_vllm_api`) or the CPU test double
    (`vllm_fake.fake_api`)."""

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


def weight_metadata(named: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> dict[str, list]:
    """{'names', 'dtype_names', 'shapes'} in sending order: what both ends of an NCCL update must agree on."""
    items = named.items() if isinstance(named, Mapping) else named
    meta: dict[str, list] = {"names": [], "dtype_names": [], "shapes": []}
    for name, t in items:
        meta["names"].append(name)
        meta["dtype_names"].append(str(t.dtype).removeprefix("torch."))
        meta["shapes"].append(list(t.shape))
    return meta


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


# ------------------------------------------------------------------------------------------------------------------
# The event loop thread
# ------------------------------------------------------------------------------------------------------------------


class _LoopThread:
    """An asyncio loop running forever in a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("VLLMEngine methods must not be called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


# ------------------------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------------------------


class _Response:
    """One response being assembled across resubmissions: tokens, logprobs and a weight version per token."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []

    def truncate(self, n: int) -> None:
        del self.tokens[n:], self.logprobs[n:], self.versions[n:]

    def extend(self, tokens: list[int], logprobs: list[float], versions: list[int]) -> None:
        self.tokens += tokens
        self.logprobs += logprobs
        self.versions += versions

    def spans(self) -> list[tuple[int, int, int]]:
        """Runs of equal versions as (version, start, end), end exclusive."""
        out: list[tuple[int, int, int]] = []
        for i, v in enumerate(self.versions):
            if out and out[-1][0] == v:
                out[-1] = (v, out[-1][1], i + 1)
            else:
                out.append((v, i, i + 1))
        return out


def sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """The sampled token's logprob at each position, from vLLM's [{token_id: Logprob}] (logprobs=0)."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs: requests must set logprobs=0")
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} logprob entries for {len(token_ids)} tokens")
    out = []
    for pos, (tok, entry) in enumerate(zip(token_ids, logprobs)):
        lp = entry.get(tok) if entry is not None else None
        if lp is None:
            raise RuntimeError(f"vLLM's logprobs at position {pos} lack the sampled token {tok}")
        out.append(float(getattr(lp, "logprob", lp)))
    return out


class VLLMEngine(Engine):
    """`Engine` over vLLM's AsyncLLM (or its CPU test double).

    model: a Hugging Face model directory (config.json + tokenizer; weights optional: without *.safetensors the
        engine starts from random weights at version -1 and waits for the learner's first update).
    vllm_config: `gspo_async.config.VLLMConfig` (update_mode, transport, logprobs_mode, memory, parallelism).
    seed: this actor's engine seed (vLLM's sampling RNG); give every actor its own.
    step_timeout_s: bound on each weight-update step and collective (seconds).
    api: resolved vLLM names; None imports vLLM (raising `VLLMUnavailable` with install steps when it is missing).
    host_chunk_bytes: tensor bytes per worker RPC for the host/ipc transports.
    """

    def __init__(self, model: str | Path, vllm_config: Any = None, *, seed: int = 0, step_timeout_s: float = 60.0,
                 api: VLLMApi | None = None, max_model_len: int | None = None,
                 engine_overrides: dict[str, Any] | None = None, host_chunk_bytes: int = 256 << 20,
                 drain_settle_s: float = 0.02, stats_window_s: float = 30.0) -> None:
        from gspo_async.config import VLLMConfig

        self.cfg = vllm_config if vllm_config is not None else VLLMConfig()
        if not step_timeout_s > 0:
            raise ValueError(f"step_timeout_s={step_timeout_s} must be a positive number of seconds")
        if self.cfg.weight_transport == "ipc" and self.cfg.tensor_parallel_size > 1:
            raise ValueError("weight_transport: ipc shares tensors of one GPU and needs tensor_parallel_size: 1; "
                             "use weight_transport: host or nccl with tensor parallelism")
        self.api = api if api is not None else load_vllm_api()
        self.features = self.api.features
        _check_supported(self.features.version)
        model_dir = Path(model).expanduser()
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{model_dir} is not a Hugging Face model directory (no config.json); vLLM actors "
                             "need the model's config and tokenizer locally (weights may come from the learner)")
        has_weights = any(model_dir.glob("*.safetensors")) or any(model_dir.glob("*.bin"))
        self.version = 0 if has_weights else -1
        self.seed = int(seed)
        self.step_timeout_s = float(step_timeout_s)
        self.host_chunk_bytes = int(host_chunk_bytes)
        self.drain_settle_s = float(drain_settle_s)
        self.engine_args = engine_args(model_dir, self.cfg, seed=self.seed, load_weights=has_weights,
                                       max_model_len=max_model_len, api=self.api, overrides=engine_overrides)
        # state shared with the loop thread (plain attributes: written on the loop, read anywhere)
        self._use_labels = self.features.weight_versions  # per-token versions from vLLM's own labels (0.32+)
        self._token_version = self.version  # version of tokens sampled from now on (own tracking)
        self._label_to_version: dict[str, int] = {}
        self._abort_epoch = 0  # incremented by every update that aborts in-flight requests
        self._deltas = 0  # outputs consumed, for draining before a switch
        self._broken: BaseException | None = None
        self._closing = False
        self._packing: dict[str, Any] = {}
        self._rid_prefix = f"gspo-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._stats = collections.Counter()
        self._pause_last_s = 0.0
        self._update_last_s = 0.0
        self._window_s = stats_window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._started = time.monotonic()
        self._loop = _LoopThread(name=f"vllm-engine-{self.seed}")
        try:
            self.llm = self._loop.call(self._create())
        except BaseException:
            self._loop.stop()
            raise

    @classmethod
    def from_config(cls, cfg: Any, model_dir: str | Path, seed: int) -> "VLLMEngine":
        """Build from the run config: actor.engine 'vllm' (real vLLM) or 'vllm-fake' (the CPU test double)."""
        api = None
        if cfg.actor.engine == "vllm-fake":
            from gspo_async.testing.vllm_fake import fake_api

            api = fake_api()
        elif cfg.actor.engine != "vllm":
            raise ValueError(f"VLLMEngine serves actor.engine vllm or vllm-fake, not {cfg.actor.engine!r}")
        return cls(model_dir, cfg.actor.vllm, seed=seed, step_timeout_s=cfg.learner.weight_sync.timeout_s, api=api,
                   max_model_len=cfg.prompt_length + cfg.response_length)

    async def _create(self) -> Any:
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._update_lock = asyncio.Lock()
        return self.api.make_engine(dict(self.engine_args))

    # -- generation ---------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> list[list[Generation]]:
        self._check_request(prompts, n, sampling)
        t0 = time.monotonic()
        groups = self._loop.call(self._generate(prompts, n, sampling))
        self._record(sum(len(g.tokens) for group in groups for g in group), time.monotonic() - t0)
        return groups

    def _check_request(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> None:
        if self._broken is not None:
            raise EngineNeedsResync(self._resync_message())
        if n < 1:
            raise ValueError(f"n={n} responses per prompt must be at least 1")
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
        if sampling.top_p < 1.0 or sampling.top_k > 0:
            raise ValueError(
                f"top_p={sampling.top_p}, top_k={sampling.top_k}: vLLM's logprobs under truncation are renormalised "
                "over the kept tokens, not the full softmax the learner computes; set sampling.top_p: 1.0 and "
                "sampling.top_k: 0 for training")
        if self.cfg.logprobs_mode == "raw_logprobs" and sampling.temperature not in (0.0, 1.0):
            raise ValueError(
                f"actor.vllm.logprobs_mode: raw_logprobs ignores the sampling temperature ({sampling.temperature}); "
                "the learner's logprobs are at that temperature. Use logprobs_mode: processed_logprobs")

    async def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> list[list[Generation]]:
        tasks = [asyncio.ensure_future(self._respond(list(map(int, p)), sampling)) for p in prompts for _ in range(n)]
        self._tasks.update(tasks)
        try:
            done = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            if self._broken is not None:
                raise EngineNeedsResync(self._resync_message()) from None
            raise
        finally:
            for t in tasks:
                t.cancel()
            self._tasks.difference_update(tasks)
        return [list(done[i * n : (i + 1) * n]) for i in range(len(prompts))]

    async def _respond(self, prompt: list[int], sampling: SamplingSettings) -> Generation:
        resp = _Response()
        reason = "abort"
        while True:
            await self._resumed.wait()  # never submit during an update (vLLM 0.33 rejects it in abort mode)
            if self._broken is not None:
                raise EngineNeedsResync(self._resync_message())
            remaining = sampling.max_new_tokens - len(resp.tokens)
            epoch, submit_version = self._abort_epoch, self.version
            params = self._params(sampling, remaining)
            prompt_in = {"prompt_token_ids": prompt + resp.tokens, "cache_salt": f"gspo-v{submit_version}"}
            try:
                reason = await self._stream(f"{self._rid_prefix}-{next(self._ids)}", prompt_in, params, resp,
                                            submit_version)
            except self.api.retryable_errors:
                await asyncio.sleep(0.01)  # paused by an update that has not resumed yet
                continue
            left = sampling.max_new_tokens - len(resp.tokens)
            if reason == "abort" and epoch != self._abort_epoch and not self._closing and left > 0:
                self._stats["resubmitted"] += 1  # aborted by our own update: continue under the new weights
                continue
            if reason == "abort" and left <= 0:
                reason = "length"
            return Generation(resp.tokens, resp.logprobs, reason, resp.spans())

    def _params(self, sampling: SamplingSettings, max_tokens: int) -> Any:
        kind = self.api.output_kind.FINAL_ONLY if self._use_labels else self.api.output_kind.DELTA
        return self.api.sampling_params(
            n=1, temperature=sampling.temperature, top_p=1.0, top_k=0, min_p=0.0, max_tokens=max_tokens,
            logprobs=0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, detokenize=False,
            output_kind=kind)

    async def _stream(self, request_id: str, prompt: dict[str, Any], params: Any, resp: _Response,
                      submit_version: int) -> str:
        base = len(resp.tokens)
        reason = None
        async for out in self.llm.generate(prompt, params, request_id):
            comp = out.outputs[0]
            ids = [int(t) for t in comp.token_ids]
            lps = sampled_logprobs(comp.logprobs, ids)
            if params.output_kind == self.api.output_kind.FINAL_ONLY:  # cumulative output, vLLM's own labels
                resp.truncate(base)
                resp.extend(ids, lps, self._labelled_versions(comp, len(ids), submit_version))
            else:
                # Abort mode: no request outlives an update, so its tokens carry the version it was submitted
                # under. Keep mode: the version in force when the delta arrived (exact thanks to _drain).
                stamp = submit_version if self.cfg.update_mode == "abort" else self._token_version
                resp.extend(ids, lps, [stamp] * len(ids))
                self._deltas += 1
            if comp.finish_reason is not None:
                reason = str(comp.finish_reason)
            if out.finished:
                break
        return reason or "abort"

    def _labelled_versions(self, comp: Any, n: int, fallback: int) -> list[int]:
        spans = getattr(comp, "weight_versions", None)
        versions = [fallback] * n
        if spans is None:
            if self._use_labels:
                log.warning("vLLM %s returned no weight_versions; tracking versions from pause points instead",
                            self.api.version)
                self._use_labels = False
            return versions  # this request: its submit version (the older one if an update overlapped it)
        try:
            for span in spans:
                label, start, end = (span.version, span.start, span.end) if hasattr(span, "start") else span
                v = self._label_to_version.get(str(label))
                if v is None:
                    try:
                        v = int(label)
                    except (TypeError, ValueError):
                        v = fallback  # the weights loaded at start-up carry vLLM's default label
                for i in range(max(0, int(start)), min(n, int(end))):
                    versions[i] = v
        except (TypeError, ValueError, AttributeError) as err:
            log.warning("unreadable weight_versions %r (%s); tracking versions from pause points instead", spans, err)
            self._use_labels = False
            return [fallback] * n
        return versions

    # -- weights: host / ipc ------------------------------------------------------------------------------------

    def apply_weights(self, tensors: dict[str, torch.Tensor], version: int, transport: str | None = None) -> None:
        """Load a full weight version (HF parameter names) into vLLM and set `version`; safe mid-generation.

        transport: 'ipc' shares CUDA tensors by IPC handle (TP 1), 'host' sends bytes through the worker RPC;
        None follows weight_transport ('nccl', for a full local apply, picks ipc when every tensor is already on
        the GPU and TP is 1, else host). A successful call also clears a pending resync.
        """
        if not tensors:
            raise ValueError("apply_weights needs the full set of weights, got none")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        if transport is None:
            on_gpu = all(t.device.type == "cuda" for t in tensors.values())
            transport = self.cfg.weight_transport
            if transport == "nccl":
                transport = "ipc" if on_gpu and self.cfg.tensor_parallel_size == 1 else "host"
        if transport not in ("host", "ipc"):
            raise ValueError(f"transport must be 'host' or 'ipc', got {transport!r}")
        if transport == "ipc" and (not torch.cuda.is_available() or self.cfg.tensor_parallel_size != 1):
            raise ValueError("the ipc transport needs a GPU in this process and tensor_parallel_size 1; use host")
        self._loop.call(self._apply(list(tensors.items()), int(version), transport))

    async def _apply(self, items: list[tuple[str, torch.Tensor]], version: int, transport: str) -> None:
        if transport == "ipc":
            items = [(k, t if t.device.type == "cuda" else t.cuda()) for k, t in items]
            torch.cuda.current_stream().synchronize()  # IPC readers see memory, not our stream's pending writes
        nbytes = sum(t.numel() * t.element_size() for _, t in items)

        async def start() -> None:
            await self._step("gspo_begin_reload", self._rpc("gspo_begin_reload"), version)

        async def transfer() -> None:
            method = "gspo_load_ipc" if transport == "ipc" else "gspo_load_host"
            encode = encode_ipc if transport == "ipc" else encode_host
            for chunk in _chunks(items, self.host_chunk_bytes):
                await self._step(method, self._rpc(method, encode(chunk)), version)

        async def finish() -> None:
            counts = await self._step("gspo_finish_reload", self._rpc("gspo_finish_reload"), version)
            if any(int(c) != len(items) for c in counts):
                raise RuntimeError(f"workers loaded {counts} tensors, {len(items)} were sent")
            await self._set_label(version)

        await self._update(version, start, transfer, finish, nbytes)

    async def _set_label(self, version: int) -> None:
        """Name the weights for vLLM's per-token labels (0.32+); without that call, track versions ourselves."""
        if not self._use_labels:
            return
        setter = getattr(self.llm, "update_weight_version", None)
        try:
            if setter is None:
                raise AttributeError("AsyncLLM has no update_weight_version")
            await self._step("update_weight_version", setter(str(version)), version)
        except (AttributeError, TypeError) as err:
            log.warning("cannot label weights in vLLM %s (%s); tracking versions from pause points instead",
                        self.api.version, err)
            self._use_labels = False

    def _rpc(self, method: str, *args: Any) -> Awaitable[list[Any]]:
        return self.llm.collective_rpc(method, timeout=self.step_timeout_s, args=args)

    # -- weights: vLLM's NCCL weight transfer -------------------------------------------------------------------

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

    # -- the update sequence ------------------------------------------------------------------------------------

    async def _update(self, version: int, start: Callable[[], Awaitable[None]],
                      transfer: Callable[[], Awaitable[None]], finish: Callable[[], Awaitable[None]],
                      nbytes: int) -> None:
        async with self._update_lock:
            t0 = time.monotonic()
            abort = self.cfg.update_mode == "abort"
            self._resumed.clear()
            if abort:
                self._abort_epoch += 1
            try:
                await self._step("pause_generation",
                                 self.llm.pause_generation(mode=self.cfg.update_mode, clear_cache=abort), version)
                if not abort and not self._use_labels:
                    await self._drain()
                t1 = time.monotonic()
                await start()
                await transfer()
                await finish()
                self._update_last_s = time.monotonic() - t1
                # Best effort: with kept requests vLLM cannot drop their blocks (returns False); cache_salt keeps
                # new requests off old-version KV anyway.
                if not await self._step("reset_prefix_cache", self.llm.reset_prefix_cache(), version):
                    log.debug("reset_prefix_cache declined (blocks held by kept requests)")
                self._label_to_version[str(version)] = version
                self.version = version
                self._token_version = version
                await self._step("resume_generation", self.llm.resume_generation(), version)
            except BaseException as err:
                self._mark_broken(err)
                raise
            self._broken = None
            self._resumed.set()
            self._pause_last_s = time.monotonic() - t0
            self._stats["updates"] += 1
            self._stats["update_bytes"] += nbytes
            self._stats["pause_ms_total"] += int(1000 * self._pause_last_s)

    async def _drain(self) -> None:
        """Let outputs of steps taken before the pause reach their requests, so they are stamped with the old
        version. vLLM answers the pause call before its output handler has necessarily delivered every earlier
        step; once paused nothing new is produced, so waiting until outputs stop arriving is enough."""
        deadline = time.monotonic() + self.step_timeout_s
        seen = -1
        while seen != self._deltas and time.monotonic() < deadline:
            seen = self._deltas
            await asyncio.sleep(self.drain_settle_s)

    async def _step(self, name: str, call: Awaitable[Any], version: int) -> Any:
        try:
            return await asyncio.wait_for(call, self.step_timeout_s)
        except asyncio.TimeoutError:
            raise WeightSyncTimeout(
                f"vLLM weight update to version {version}: step {name!r} did not finish within "
                f"{self.step_timeout_s:g} s (a dead or slow learner, or names/shapes that differ between learner "
                "and actor?). The engine is marked as needing a full resync; if the next full update times out "
                "too, vLLM's workers are stuck in the collective: restart the actor") from None

    async def _bounded(self, name: str, call: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(call, self.step_timeout_s)
        except asyncio.TimeoutError:
            raise WeightSyncTimeout(f"vLLM {name} did not finish within {self.step_timeout_s:g} s: is the learner "
                                    "joining the same address, port and world size?") from None

    def _mark_broken(self, err: BaseException) -> None:
        self._broken = err
        self._stats["failed_updates"] += 1
        for task in list(self._tasks):  # in-flight responses would wait forever on a paused engine
            task.cancel()
        self._resumed.set()  # waiting responses wake up and raise EngineNeedsResync

    def _resync_message(self) -> str:
        return (f"the vLLM engine needs a full weight resync after a failed update ({self._broken!r}): generation "
                "is refused until apply_weights / receive_weights with the full weights succeeds (restart the actor "
                "if that times out too)")

    @property
    def needs_resync(self) -> bool:
        return self._broken is not None

    # -- checks, stats, shutdown --------------------------------------------------------------------------------

    def state_dict_for_check(self) -> dict[str, torch.Tensor]:
        """Parameters of the first worker, copied to the CPU. With real vLLM the names are vLLM's internal ones
        (fused qkv_proj / gate_up_proj, tensor-parallel shards), not the learner's."""
        records = self._loop.call(self.llm.collective_rpc("gspo_state_dict", timeout=self.step_timeout_s))
        return dict(decode_host(records[0]))

    def _record(self, tokens: int, seconds: float) -> None:
        now = time.monotonic()
        self._stats["tokens"] += tokens
        self._stats["generate_ms_total"] += int(1000 * seconds)
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()

    def stats(self) -> dict[str, float]:
        """tokens_per_s over the last `stats_window_s`; pause_s_last: wall time generation was paused by the last
        update (pause call to resume); update_s_last: start..finish of it (the transfer)."""
        now = time.monotonic()
        window = min(self._window_s, max(now - self._started, 1e-9))
        recent = sum(tok for t, tok in self._recent if t >= now - window)
        s = self._stats
        return {
            "tokens_per_s": recent / window,
            "tokens_total": float(s["tokens"]),
            "generate_s_total": s["generate_ms_total"] / 1000,
            "version": float(self.version),
            "updates_total": float(s["updates"]),
            "failed_updates_total": float(s["failed_updates"]),
            "update_bytes_total": float(s["update_bytes"]),
            "pause_s_last": self._pause_last_s,
            "pause_s_total": s["pause_ms_total"] / 1000,
            "update_s_last": self._update_last_s,
            "resubmitted_total": float(s["resubmitted"]),
            "needs_resync": float(self._broken is not None),
        }

    def close(self) -> None:
        if self._loop.loop.is_closed() or self._closing:
            return
        self._closing = True

        async def shutdown() -> None:
            for task in list(self._tasks):
                task.cancel()
            self.llm.shutdown()

        try:
            self._loop.call(shutdown(), timeout=60)
        finally:
            self._loop.stop()


def _check_supported(version: tuple[int, int, int]) -> None:
    low, high = TESTED_RANGE
    if version[:2] < low:
        raise VLLMUnavailable(f"vLLM {'.'.join(map(str, version))} is older than {low[0]}.{low[1]}, the oldest "
                              f"release whose pause/resume and weight-transfer APIs this engine uses. {INSTALL_HINT}")
    if version[:2] > high:
        log.warning("vLLM %s is newer than %d.%d, the newest release this engine was written against",
                    ".".join(map(str, version)), *high)


def _chunks(items: list[tuple[str, torch.Tensor]], max_bytes: int) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most max_bytes (a larger tensor travels alone)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in items:
        n = t.numel() * t.element_size()
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t))
        size += n
    if chunk:
        yield chunk


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
