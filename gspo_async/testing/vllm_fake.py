"""A CPU test double of vLLM's `AsyncLLM`: exactly the subset `VLLMEngine` calls, over a small transformers model.

This is a test double, not an inference engine. vLLM needs a CUDA machine and cannot be installed on the CPU
machines that run CI, yet the adapter in engines/vllm*.py (pause/update/resume sequencing, version tracking, abort
and resubmit, logprob extraction, timeouts, the NCCL rendezvous) is where the bugs would be. Tests and tools build
`VLLMEngine(..., api=fake_api(version))`, so CI runs that adapter code unchanged; the worker side (the production
`GSPOWorkerExtension` over stand-ins of the vLLM functions it imports) is in vllm_fake_worker.py.

What it reproduces, per emulated version (`vllm_version`, default 0.24.0), from vLLM's documented behaviour:
- `generate(prompt, sampling_params, request_id)`: an async iterator of RequestOutput-like objects whose single
  CompletionOutput has token_ids, logprobs as [{token_id: Logprob(logprob=...)}], finish_reason ('stop' with the
  EOS token included, 'length', 'abort'); output kinds DELTA / CUMULATIVE / FINAL_ONLY; `weight_versions` spans
  (label, start, end) over output indexes from 0.32. DELTA logprobs are sliced as each release does: before 0.29
  `history[-len(token_ids):]`, so an output with no new tokens (an aborted request's last) carries the whole
  history; from 0.29 only the new tokens' entries.
- closing the iterator of an unfinished request, or cancelling its consumer, aborts it (`abort`), as vLLM's
  generate does in its GeneratorExit / CancelledError branch; aborts of requests that had already finished are
  counted in `aborts_of_finished` (an adapter that leaves finished generators to the garbage collector sends
  them).
- continuous batching: one scheduler task advances every running request by one token per step; requests are
  independent (own KV cache), so batch composition never changes results.
- logprobs_mode: processed_logprobs = log softmax(logits / T), raw_logprobs = log softmax(logits); greedy at T = 0.
- seeding: one engine-wide generator seeded with the engine `seed` (vLLM's global-RNG behaviour).
- pause_generation(mode, clear_cache): abort ends running requests with 'abort' outputs; keep freezes them (and
  clear_cache=True drops their KV, so they re-prefill on resume); requests submitted while paused are queued,
  except that 0.33 rejects them with `RetryableRequestError` in abort/wait mode.
- weight transfer: init_weight_transfer_engine / start / update / finish with each version's signatures and info
  keys, over a gloo group in place of NCCL (`fake_trainer_init` is the learner's end); collective_rpc into a
  worker carrying the configured `worker_extension_cls`, with arguments round-tripped through msgpack like vLLM's.
- a generation step while a reload is active fails loudly: vLLM would silently sample from half-loaded weights.
What it does not model: vLLM's model runners (0.24's V1 runner and 0.33's Model Runner V2 are different code
paths; here one transformers forward per step), paged KV and prefix caching (cache_salt is recorded, not used),
CUDA graphs, tensor parallelism, packed NCCL buffers, speed.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gspo_async.engines.vllm_api import VLLMApi, VLLMFeatures, parse_version
from gspo_async.testing.vllm_fake_worker import (FakeModel, build_worker, fake_trainer_init, in_thread, round_trip,
                                                 vllm_stand_ins)



class RetryableRequestError(Exception):
    """vLLM 0.33: a request submitted during an abort/wait pause; retry after resume."""


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    weight_versions: list[tuple[str | None, int, int]] | None = None
    text: str = ""


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class SamplingParams:
    """The fields VLLMEngine sets; anything the double cannot honour is refused rather than ignored."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    detokenize: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n != 1:
            raise NotImplementedError("the vLLM test double serves n=1 requests only")
        if self.top_p != 1.0 or self.top_k not in (0, -1) or self.min_p != 0.0:
            raise NotImplementedError("the vLLM test double does not truncate (top_p=1, top_k=0, min_p=0)")
        if (self.repetition_penalty, self.presence_penalty, self.frequency_penalty) != (1.0, 0.0, 0.0):
            raise NotImplementedError("the vLLM test double applies no penalties")
        if self.max_tokens is None or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")


@dataclass
class WeightTransferInitRequest:
    init_info: dict[str, Any]


@dataclass
class WeightTransferUpdateRequest:
    update_info: dict[str, Any]


@dataclass
class WeightTransferConfig:
    backend: str = "nccl"


# ------------------------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)  # identity semantics: requests are found in lists by identity
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    queue: asyncio.Queue
    salt: str | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    cache: Any = None  # the HF cache; None = (re)prefill prompt + tokens on the next step
    delivered: int = 0
    finish_reason: str | None = None


class FakeAsyncLLM:
    """AsyncLLM's subset used by VLLMEngine. Keyword arguments are the AsyncEngineArgs VLLMEngine passes."""

    OUTPUT_DELAY_S = 0.005  # latency from an engine step to its output reaching the request's iterator

    def __init__(self, *, model: str, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 max_model_len: int | None = None, logprobs_mode: str = "raw_logprobs",
                 enable_prefix_caching: bool = True, load_format: str = "auto", worker_extension_cls: str = "",
                 weight_transfer_config: WeightTransferConfig | None = None, disable_log_stats: bool = False,
                 skip_tokenizer_init: bool = False, vllm_version: str = "0.24.0") -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        if tensor_parallel_size != 1:
            raise NotImplementedError("the vLLM test double runs tensor_parallel_size=1 only")
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode {logprobs_mode!r} is not supported by Model Runner V2")
        self.version = parse_version(vllm_version)
        self.seed = int(seed)
        self.logprobs_mode = logprobs_mode
        path = Path(model)
        config = AutoConfig.from_pretrained(str(path))
        if load_format == "dummy":
            torch.manual_seed(self.seed)  # random weights, like vLLM's dummy loader
            hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        hf.eval()
        self.model = FakeModel(hf, torch.device("cpu"))
        self.max_model_len = int(max_model_len or config.max_position_embeddings)
        self.vocab_size = int(config.vocab_size)
        self.eos_ids = _eos_ids(hf)
        self.worker = build_worker(self.model, self.version, worker_extension_cls)
        self.features = VLLMFeatures(self.version)
        self.weight_transfer = weight_transfer_config
        self.generator = torch.Generator().manual_seed(self.seed)
        self.label: str | None = None  # weight version label (0.27+)
        self.salts: list[str | None] = []
        self.steps_done = 0
        self.calls: list[str] = []  # front-end weight/pause calls in order, for tests
        self.aborts = 0  # abort() calls for requests still running
        self.aborts_of_finished = 0  # abort() calls for requests that had already finished (wasted RPCs)
        self._finished_ids: set[str] = set()
        self._running: list[_Request] = []
        self._paused: str | None = None  # None, 'new' (abort/wait) or 'all' (keep)
        self._budget: int | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: asyncio.Task | None = None
        self._deliverer: asyncio.Task | None = None
        self._pipe: collections.deque[tuple[float, asyncio.Queue, RequestOutput]] = collections.deque()
        self._piped = asyncio.Event()
        self._closed = False

    # -- test knobs ---------------------------------------------------------------------------------------------

    def set_step_budget(self, steps: int | None) -> None:
        """Let the scheduler take at most `steps` more steps (None: unlimited). Callable from any thread."""
        def apply() -> None:
            self._budget = steps
            self._wake.set()

        if self._loop is None:
            self._budget = steps
        else:
            self._loop.call_soon_threadsafe(apply)

    # -- generation ---------------------------------------------------------------------------------------------

    async def generate(self, prompt: dict[str, Any], sampling_params: SamplingParams, request_id: str,
                       **_: Any) -> AsyncIterator[RequestOutput]:
        if self._closed:
            raise RuntimeError("engine is shut down")
        if self._paused == "new" and self.version >= (0, 33, 0):
            raise RetryableRequestError("generation is paused; retry after resume_generation")
        ids = [int(t) for t in prompt["prompt_token_ids"]]
        if not ids or any(not 0 <= t < self.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be non-empty and in [0, {self.vocab_size})")
        if len(ids) + sampling_params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({len(ids)}) + max_tokens ({sampling_params.max_tokens}) exceeds "
                             f"max_model_len {self.max_model_len}")
        if sampling_params.logprobs is None:
            raise AssertionError("the adapter must request logprobs")
        self._ensure_scheduler()
        req = _Request(request_id, ids, sampling_params, asyncio.Queue(), prompt.get("cache_salt"))
        self.salts.append(req.salt)
        self._running.append(req)
        self._wake.set()
        try:
            while True:
                out = await req.queue.get()
                if isinstance(out, BaseException):
                    raise out
                yield out
                if out.finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)  # the consumer went away: vLLM aborts, finished or not
            raise

    def _ensure_scheduler(self) -> None:
        if self._scheduler is None:
            self._loop = asyncio.get_running_loop()
            self._scheduler = self._loop.create_task(self._schedule())
            self._deliverer = self._loop.create_task(self._deliver())

    async def _deliver(self) -> None:
        """Hand outputs to their requests in order, OUTPUT_DELAY_S after the step that made them: vLLM's output
        handler is asynchronous too, so a pause call can return before the last step's outputs arrive."""
        while not self._closed:
            if not self._pipe:
                self._piped.clear()
                await self._piped.wait()
                continue
            due, queue, out = self._pipe[0]
            if time.monotonic() < due:
                await asyncio.sleep(due - time.monotonic())
                continue
            self._pipe.popleft()
            queue.put_nowait(out)

    async def _schedule(self) -> None:
        while not self._closed:
            runnable = [] if self._paused == "all" else list(self._running)
            if self._paused == "new":
                runnable = [r for r in runnable if r.tokens or r.cache is not None]  # queued requests wait
            if not runnable or (self._budget is not None and self._budget <= 0):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                for req in runnable:
                    self._advance(req)
            except Exception as err:  # noqa: BLE001 - surfaced to every waiting request
                for req in list(self._running):
                    self._running.remove(req)
                    req.queue.put_nowait(err)
                continue
            self.steps_done += 1
            if self._budget is not None:
                self._budget -= 1
            await asyncio.sleep(0)

    @torch.no_grad()
    def _advance(self, req: _Request) -> None:
        """One decoding step of one request."""
        if self.model.reloading:
            raise RuntimeError("generation step while weights are being reloaded: the caller did not pause")
        hf = self.model.hf
        if req.cache is None:
            out = hf(input_ids=torch.tensor([req.prompt + req.tokens]), use_cache=True)
        else:
            out = hf(input_ids=torch.tensor([[req.tokens[-1]]]), past_key_values=req.cache, use_cache=True)
        req.cache = out.past_key_values
        logits = out.logits[0, -1].float()
        t = req.params.temperature
        if t == 0:
            token = int(logits.argmax())
            logprob = torch.log_softmax(logits, -1)[token]
        else:
            scaled = logits / t
            token = int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=self.generator))
            logprob = torch.log_softmax(scaled if self.logprobs_mode == "processed_logprobs" else logits, -1)[token]
        rank = int((logits > logits[token]).sum()) + 1
        req.tokens.append(token)
        req.logprobs.append({token: Logprob(float(logprob), rank)})
        req.labels.append(self.label)
        if token in self.eos_ids:
            req.finish_reason = "stop"
        elif len(req.tokens) >= req.params.max_tokens:
            req.finish_reason = "length"
        self._emit(req)

    def _emit(self, req: _Request) -> None:
        finished = req.finish_reason is not None
        kind = req.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return
        start = req.delivered if kind == RequestOutputKind.DELTA else 0
        tokens = req.tokens[start:]
        if kind == RequestOutputKind.DELTA and self.features.delta_logprobs_by_token_count:
            # vLLM < 0.29 slices the history by the token count: [-0:] is the whole history
            logprobs = req.logprobs[-len(tokens):] if req.logprobs else []
        else:
            logprobs = req.logprobs[start:]
        spans = _spans(req.labels) if self.version >= (0, 32, 0) else None
        comp = CompletionOutput(0, tokens, logprobs, req.finish_reason, spans)
        req.delivered = len(req.tokens)
        self._pipe.append((time.monotonic() + self.OUTPUT_DELAY_S, req.queue,
                           RequestOutput(req.request_id, req.prompt, [comp], finished)))
        self._piped.set()
        if finished:
            self._finished_ids.add(req.request_id)
            if req in self._running:
                self._running.remove(req)

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        """Abort requests by id; ids of requests that already finished are counted, not an error (as in vLLM)."""
        for rid in [request_id] if isinstance(request_id, str) else list(request_id):
            running = [r for r in self._running if r.request_id == rid]
            if not running:
                self.aborts_of_finished += rid in self._finished_ids
                continue
            self.aborts += 1
            for req in running:
                self._running.remove(req)

    # -- pause / resume -----------------------------------------------------------------------------------------

    async def pause_generation(self, *, mode: str = "abort", clear_cache: bool = True) -> None:
        if mode not in ("abort", "wait", "keep"):
            raise ValueError(f"pause mode must be abort, wait or keep, got {mode!r}")
        self.calls.append(f"pause:{mode}")
        if mode == "abort":
            for req in list(self._running):
                req.finish_reason = "abort"
                self._emit(req)
            self._paused = "new"
        elif mode == "wait":
            self._paused = "new"
            while any(r.tokens or r.cache is not None for r in self._running):
                await asyncio.sleep(0.001)
        else:
            self._paused = "all"
            if clear_cache:  # preempt: frozen requests recompute their KV on resume (under the new weights)
                for req in self._running:
                    req.cache = None

    async def resume_generation(self) -> None:
        self.calls.append("resume")
        self._paused = None
        self._wake.set()

    async def is_paused(self) -> bool:
        return self._paused is not None

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append("reset_prefix_cache")
        return not self._running  # vLLM declines while requests hold blocks

    # -- weights ------------------------------------------------------------------------------------------------

    def _require(self, minor: int, name: str) -> None:
        if self.version < (0, minor, 0):
            raise AttributeError(f"vLLM {self.version} has no AsyncLLM.{name}")

    def _require_transfer(self) -> None:
        if self.weight_transfer is None:
            raise RuntimeError("Weight transfer not configured. Please set weight_transfer_config")

    async def init_weight_transfer_engine(self, request: WeightTransferInitRequest) -> None:
        if not isinstance(request, WeightTransferInitRequest):
            raise TypeError("init_weight_transfer_engine needs a WeightTransferInitRequest")
        self._require_transfer()
        self.calls.append("init_weight_transfer_engine")
        info = dict(request.init_info)
        await in_thread(lambda: self.worker.init_weight_transfer_engine(info))

    async def start_weight_update(self, *args: Any, **kwargs: Any) -> None:
        self._require(21, "start_weight_update")
        if self.version < (0, 25, 0):
            if set(kwargs) - {"is_checkpoint_format"} or len(args) > 1:
                raise TypeError("start_weight_update(is_checkpoint_format=True)")
            if not kwargs.get("is_checkpoint_format", args[0] if args else True):
                raise NotImplementedError("the vLLM test double loads checkpoint-format weights only")
        elif args or kwargs:
            raise TypeError("start_weight_update() takes no arguments since vLLM 0.25")
        self._require_transfer()
        self.calls.append("start_weight_update")
        self.worker.start_weight_update()

    async def update_weights(self, request: WeightTransferUpdateRequest) -> None:
        if not isinstance(request, WeightTransferUpdateRequest):
            raise TypeError("update_weights needs a WeightTransferUpdateRequest")
        self._require_transfer()
        self.calls.append("update_weights")
        if self.version < (0, 21, 0):  # one call did the whole update
            self.worker.start_weight_update()
        info = dict(request.update_info)
        received = await in_thread(lambda: self.worker.receive(info))
        self.worker.load_received(received)
        if self.version < (0, 21, 0):
            self.worker.finish_weight_update()

    async def finish_weight_update(self, *args: Any, **kwargs: Any) -> None:
        self._require(21, "finish_weight_update")
        if self.version < (0, 27, 0) and (args or kwargs):
            raise TypeError("finish_weight_update() takes no arguments before vLLM 0.27")
        self.calls.append("finish_weight_update")
        self.worker.finish_weight_update()
        version = kwargs.get("weight_version", args[0] if args else None)
        if version is not None:
            self.label = str(version)

    async def update_weight_version(self, version: str) -> None:
        self._require(27, "update_weight_version")
        self.label = str(version)

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                             kwargs: dict[str, Any] | None = None) -> list[Any]:
        self.calls.append(f"rpc:{method}")
        fn = getattr(self.worker, method)
        with vllm_stand_ins(self.model):  # what the extension imports from vLLM, inside the worker
            result = fn(*round_trip(list(args)), **round_trip(kwargs or {}))
        return [round_trip(result)]

    def shutdown(self) -> None:
        self._closed = True
        for task in (self._scheduler, self._deliverer):
            if task is not None:
                task.cancel()
        for req in list(self._running):
            self._running.remove(req)
            req.queue.put_nowait(RuntimeError("engine shut down"))


def _spans(labels: list[str | None]) -> list[tuple[str | None, int, int]]:
    out: list[tuple[str | None, int, int]] = []
    for i, label in enumerate(labels):
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1], i + 1)
        else:
            out.append((label, i, i + 1))
    return out


def _eos_ids(hf: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(hf.config, "eos_token_id", None), getattr(getattr(hf, "generation_config", None),
                                                                    "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


def fake_api(vllm_version: str = "0.24.0") -> VLLMApi:
    """The names VLLMEngine resolves from vLLM, pointing at this test double (emulating `vllm_version`)."""
    return VLLMApi(
        version=vllm_version,
        make_engine=lambda kwargs: FakeAsyncLLM(**kwargs, vllm_version=vllm_version),
        sampling_params=SamplingParams,
        output_kind=RequestOutputKind,
        init_request=lambda info: WeightTransferInitRequest(init_info=info),
        update_request=lambda info: WeightTransferUpdateRequest(update_info=info),
        weight_transfer_config=lambda backend: WeightTransferConfig(backend=backend),
        retryable_errors=(RetryableRequestError,),
        trainer_init=fake_trainer_init,
        packed_producer=None,
    )
