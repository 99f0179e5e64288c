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
update succeeds. `apply_weights(tensors, version)` is the path the actor loop runs: full tensors from
gspo_async.weights go to vLLM's workers through `GSPOWorkerExtension` (vllm_worker.py), by CUDA IPC handle or as
host bytes, and load with vLLM's layerwise reload. vLLM's own NCCL transfer (`join_weight_group` /
`receive_weights`, experimental) is in vllm_nccl.py; version-dependent calls are decided in vllm_api.py.

vLLM is imported lazily (`load_vllm_api`); tests and tools run this same class over the CPU test double by passing
`api=gspo_async.testing.vllm_fake.fake_api()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from gspo_async.engines.base import Engine, Generation, RateMeter, SamplingSettings, check_prompts
from gspo_async.engines.vllm_api import (INSTALL_HINT, PACKED_BUFFER_BYTES, PACKED_NUM_BUFFERS, TESTED_RANGE,
                                         EngineNeedsResync, VLLMApi, VLLMFeatures, VLLMUnavailable, WeightSyncTimeout,
                                         check_supported, engine_args, load_vllm_api, parse_version)
from gspo_async.engines.vllm_nccl import NCCLTransferMixin, VLLMWeightSender, weight_metadata
from gspo_async.engines.vllm_worker import decode_host, encode_host, encode_ipc

__all__ = ["EngineNeedsResync", "INSTALL_HINT", "PACKED_BUFFER_BYTES", "PACKED_NUM_BUFFERS", "TESTED_RANGE",
           "VLLMApi", "VLLMEngine", "VLLMFeatures", "VLLMUnavailable", "VLLMWeightSender", "WeightSyncTimeout",
           "delta_logprobs", "engine_args", "load_vllm_api", "parse_version", "sampled_logprobs",
           "weight_metadata"]

log = logging.getLogger(__name__)


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


def delta_logprobs(logprobs: Any, n_tokens: int) -> Any:
    """The entries of a DELTA output's logprobs that belong to its `n_tokens` new tokens: the last `n_tokens`, none
    when there are none. vLLM < 0.29 slices the request's history as `logprobs[-len(token_ids):]`, so an output
    with no new tokens (an aborted request's final output) carries the whole history (`[-0:]` is everything).
    Fewer entries than tokens stay as they are, for `sampled_logprobs` to refuse."""
    if logprobs is None or len(logprobs) <= n_tokens:
        return logprobs
    return list(logprobs[len(logprobs) - n_tokens:])


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


class VLLMEngine(NCCLTransferMixin, Engine):
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
                             "use weight_transport: auto or host with tensor parallelism")
        self.transport_last: str | None = None  # transport of the last successful apply_weights
        self.api = api if api is not None else load_vllm_api()
        self.features = self.api.features
        check_supported(self.features.version)
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
        self._rate = RateMeter(stats_window_s)
        self.model_dir = model_dir
        self._tokenizer: Any = None
        self.vocab_size = int(json.loads((model_dir / "config.json").read_text()).get("vocab_size") or 0) or None
        self._loop = _LoopThread(name=f"vllm-engine-{self.seed}")
        try:
            self.llm = self._loop.call(self._create())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def tokenizer(self) -> Any:
        """The model directory's tokenizer (the actor decodes responses to score them), loaded on first use."""
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            try:
                self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.model_dir))
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.model_dir} has no tokenizer the actor can decode with ({err}); the "
                                 "learner's welcome ships it with the model config") from err
        return self._tokenizer

    @classmethod
    def from_config(cls, cfg: Any, model_dir: str | Path, seed: int, api: VLLMApi | None = None) -> "VLLMEngine":
        """Build from the run config (`actor.vllm`, the weight-sync timeout, the sequence lengths). api: None
        imports vLLM; tests and tools pass the CPU double's (`gspo_async.testing.vllm_fake.fake_api()`)."""
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
        self._rate.record(sum(len(g.tokens) for group in groups for g in group), time.monotonic() - t0)
        return groups

    def _check_request(self, prompts: list[list[int]], n: int, sampling: SamplingSettings) -> None:
        if self._broken is not None:
            raise EngineNeedsResync(self._resync_message())
        check_prompts(prompts, n, self.vocab_size)
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
        finished = False
        # The generator runs to its end after the final output: leaving it unfinished would make vLLM's
        # GeneratorExit branch send an abort for a request that already ended when the generator is collected.
        # On an error or a cancellation aclosing() closes it at once, which aborts the request in vLLM.
        async with contextlib.aclosing(self.llm.generate(prompt, params, request_id)) as outputs:
            async for out in outputs:
                if finished:
                    raise RuntimeError(f"vLLM sent an output for request {request_id} after its final one")
                comp = out.outputs[0]
                ids = [int(t) for t in comp.token_ids]
                if params.output_kind == self.api.output_kind.FINAL_ONLY:  # cumulative output, vLLM's own labels
                    lps = sampled_logprobs(comp.logprobs, ids)
                    resp.truncate(base)
                    resp.extend(ids, lps, self._labelled_versions(comp, len(ids), submit_version))
                else:
                    lps = sampled_logprobs(delta_logprobs(comp.logprobs, len(ids)), ids)
                    # Abort mode: no request outlives an update, so its tokens carry the version it was submitted
                    # under. Keep mode: the version in force when the delta arrived (exact thanks to _drain).
                    stamp = submit_version if self.cfg.update_mode == "abort" else self._token_version
                    resp.extend(ids, lps, [stamp] * len(ids))
                    self._deltas += 1
                if comp.finish_reason is not None:
                    reason = str(comp.finish_reason)
                finished = bool(out.finished)
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
        None follows weight_transport ('auto', and 'nccl' for a full local apply, pick ipc when every tensor is
        already on the GPU and TP is 1, else host). A successful call also clears a pending resync.
        """
        if not tensors:
            raise ValueError("apply_weights needs the full set of weights, got none")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        if transport is None:
            on_gpu = all(t.device.type == "cuda" for t in tensors.values())
            transport = self.cfg.weight_transport
            if transport in ("auto", "nccl"):
                transport = "ipc" if on_gpu and self.cfg.tensor_parallel_size == 1 else "host"
        if transport not in ("host", "ipc"):
            raise ValueError(f"transport must be 'host' or 'ipc', got {transport!r}")
        if transport == "ipc" and (not torch.cuda.is_available() or self.cfg.tensor_parallel_size != 1):
            raise ValueError("the ipc transport needs a GPU in this process and tensor_parallel_size 1; use host")
        self._loop.call(self._apply(list(tensors.items()), int(version), transport))
        self.transport_last = transport

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

    def stats(self) -> dict[str, float]:
        """tokens_per_s over the last `stats_window_s`; pause_s_last: wall time generation was paused by the last
        update (pause call to resume); update_s_last: start..finish of it (the transfer)."""
        s = self._stats
        return {
            **self._rate.snapshot(),
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

