"""DeepSpeed learner backend: data-parallel ranks with ZeRO stage 1, 2 or 3 (``learner.deepspeed.zero_stage``).

The optimiser and schedule are the torch engine's (client ``torch.optim.AdamW`` + ``LambdaLR``), so one rank with
this engine takes the same steps as :class:`~gspo_async.learner.backends.torch_backend.TorchBackend`.

Gradient scale. The trainer divides each micro-batch loss by the mini-batch's *global* token or sequence count, so
the sum of the losses over every micro-batch of every rank is the mini-batch loss. DeepSpeed averages gradients
over ranks, so :meth:`backward` multiplies each loss by ``world_size``; ``gradient_accumulation_steps`` is 1 and
backward runs with ``scale_wrt_gas=False``, so nothing else rescales it.

Accumulation boundary. :meth:`shard` hands this rank its micro-batches and fixes how many backward passes the
mini-batch has; only the last one is marked as DeepSpeed's accumulation boundary (ZeRO-1 reduces there; ZeRO-2
and 3 reduce in every backward), and :meth:`step` is one optimiser step.

Equal collectives. ZeRO-2/3 communicate in every backward (ZeRO-3 in every forward too), so every rank must run
the same number of passes: ranks with fewer micro-batches get a copy of one of theirs whose loss is multiplied by
0 (its metrics are counted on that rank only; rank 0 never gets padding, as round-robin gives it the most).

ZeRO-3. The trainer calls the base transformer and the output embedding itself rather than DeepSpeed's forward, so
the engine hooks the base to do what that forward would (see :meth:`_before_forward`) and keeps the output
embedding gathered (see :meth:`_gather_output_embedding`).

Precision. ``model.dtype`` configures DeepSpeed's own mixed precision: bfloat16 -> ``bf16.enabled`` (DeepSpeed
casts the module to bf16 and keeps fp32 master weights and optimiser state in its ZeRO partitions), float16 ->
``fp16.enabled`` with dynamic loss scaling. The model is handed over in fp32. Broadcasts are cast to the actors'
dtype. ``learner.precision: pure`` is refused by the config (DeepSpeed has no master-weight-free mode).

CPU: fp32 over gloo. DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce with g++ the first time
a process group is wrapped on CPU (25-30 s and 1.5 GB of RAM on a fresh machine); gloo does not need it, so it is
switched off before DeepSpeed touches the group. bf16/fp16 are for CUDA only (untested on CPU here).

Nodes. The ranks may span nodes (``torchrun --nnodes N --nproc_per_node M --rdzv-endpoint HOST:PORT``): only the
global rank matters to this engine; global rank 0 owns the coordinator, the broadcast and the checkpoint files, so
the run directory needs to be on rank 0's node only (every rank writes its ZeRO partition under the path rank 0
announces, so with several nodes that directory must be on a shared file system).
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from gspo_async.learner.backends.base import LearnerBackend
from gspo_async.learner.backends.precision import actor_dtype, check_master_weights
from gspo_async.learner.backends.torch_backend import build_optimizer

CHECKPOINT_TAG = "zero"  # DeepSpeed's sub-directory inside the directory given to save()/load()


def _import_deepspeed(on_gpu: bool):
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed first picks an accelerator
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError("learner.engine: deepspeed needs the deepspeed package: pip install "
                          "'gspo-async[deepspeed]' (or set learner.engine: torch)") from err
    if not on_gpu:
        # No g++ build of the shared-memory all-reduce (module docstring). `import deepspeed.comm.torch as m`
        # would bind torch itself, because deepspeed.comm re-exports the name `torch`.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    return deepspeed


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def deepspeed_config(cfg, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config for `cfg`: ZeRO stage, clipping, fp32 unless ``extra`` enables bf16 (CUDA only).

    Keys the engine owns (accumulation, optimiser, scheduler, ZeRO stage) may not be set in ``extra``.
    """
    ds = cfg.learner.deepspeed
    extra = dict(ds.extra)
    owned = {"gradient_accumulation_steps": "optim.micro_batch_size and optim.num_mini_batches",
             "train_batch_size": "rollout_batch_size", "train_micro_batch_size_per_gpu": "optim.micro_batch_size",
             "optimizer": "optim.*", "scheduler": "optim.schedule / optim.warmup_steps",
             "gradient_clipping": "optim.grad_clip",
             "managed_gradient_accumulation": "engine.shard() (the engine sets the accumulation boundary)"}
    for key, where in owned.items():
        if key in extra:
            raise ValueError(f"learner.deepspeed.extra.{key} is set by the engine; use {where} instead")
    for key in ("bf16", "fp16"):
        if "enabled" in extra.get(key, {}):
            raise ValueError(f"learner.deepspeed.extra.{key}.enabled is set by the engine from model.dtype "
                             f"({cfg.model.dtype}); set model.dtype instead (other {key} options may stay in extra)")
    stage = extra.get("zero_optimization", {}).get("stage")
    if stage is not None and stage != ds.zero_stage:
        raise ValueError(f"learner.deepspeed.extra.zero_optimization.stage={stage} contradicts "
                         f"learner.deepspeed.zero_stage={ds.zero_stage}; set only learner.deepspeed.zero_stage")
    if not on_gpu and cfg.model.dtype != "float32":
        raise ValueError(f"model.dtype: {cfg.model.dtype} with learner.engine: deepspeed needs learner.device: cuda "
                         "(DeepSpeed on CPU trains in fp32 here); use model.dtype: float32, or learner.engine: torch "
                         "for bf16 autocast on CPU")
    base = {
        "train_micro_batch_size_per_gpu": 1,  # unused: the trainer makes its own micro-batches
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.optim.grad_clip or 0.0),  # 0 = no clipping
        "zero_optimization": {"stage": ds.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.model.dtype == "bfloat16":
        base["bf16"] = {"enabled": True}
    elif cfg.model.dtype == "float16":
        base["fp16"] = {"enabled": True, "loss_scale": 0}  # 0: dynamic loss scaling
    return _merge(base, extra)


class DeepSpeedBackend(LearnerBackend):
    """ZeRO data parallelism across the learner's ranks (see the module docstring for the gradient scale).

    Collective methods (every rank must call them together, in the same order): the constructor, the trainer's
    forward/backward/step, :meth:`broadcast_tensors` under ZeRO-3, :meth:`save` and :meth:`load`.
    """

    def __init__(self, cfg, model: torch.nn.Module):
        from gspo_async.learner.distributed import init_learner_distributed

        on_gpu = str(cfg.learner.device).startswith("cuda")
        check_master_weights(model, cfg)  # fp32 in: DeepSpeed's bf16/fp16 mode makes its own low-precision copy
        deepspeed = _import_deepspeed(on_gpu)
        self.rank, self.world_size = init_learner_distributed(cfg)
        self.zero_stage = int(cfg.learner.deepspeed.zero_stage)
        self.bucket_bytes = int(cfg.learner.weight_sync.bucket_mb * 2**20)
        self.broadcast_dtype = actor_dtype(cfg)
        optimizer, self.scheduler = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=self.scheduler,
                                                config=deepspeed_config(cfg, on_gpu))
        self.model = self.ds.module
        # The trainer runs the base transformer, not DeepSpeed's forward: do what that forward does first.
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        base.register_forward_pre_hook(self._before_forward, prepend=True)
        if self.zero_stage == 3:
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            self._not_available = ZeroParamStatus.NOT_AVAILABLE
            self._head_params = list(self.model.get_output_embeddings().parameters())
            for p in self._head_params:
                p.ds_persist = True
            base.register_forward_hook(self._gather_output_embedding)
        self._last_lr = float(self.scheduler.get_last_lr()[0])
        self._passes = 0  # backward passes of the current mini-batch on this rank (same on every rank)
        self._real = 0  # of which the first `_real` are this rank's own micro-batches, the rest padding
        self._done = 0

    def _before_forward(self, module: torch.nn.Module, args: Any) -> None:
        """What ``DeepSpeedBackend.forward`` and its hook on the top module do before a forward: end the previous
        micro-step in the ZeRO optimiser (ZeRO-3 adds the next micro-batch's gradients to the partitions only
        once it has) and, under ZeRO-3, restart the parameter coordinator's per-pass fetch trace."""
        optimizer = self.ds.optimizer
        if hasattr(optimizer, "clear_backward_seen_flag"):
            optimizer.clear_backward_seen_flag()
        if self.zero_stage == 3:
            optimizer.parameter_offload.get_param_coordinator().reset_step()

    def _gather_output_embedding(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """ZeRO-3 gathers a parameter only inside the forward of a module that owns it, but the trainer multiplies
        the base's hidden states by the output embedding directly (a chunked log-softmax that never holds the
        [tokens x vocab] logits). So after every base forward that matrix is gathered whole if it is not (it is
        released by the optimiser step, and, when tied, by the input embedding's forward while DeepSpeed records
        its fetch trace); marked persistent, DeepSpeed then keeps it whole until the next step. Its gradient and
        optimiser state stay partitioned. Every rank runs the same forwards, so the gathers line up."""
        released = [p for p in self._head_params if p.ds_status == self._not_available]
        if released:
            released[0].all_gather(param_list=released)

    # ----- the step -----
    def shard(self, items: list) -> list:
        mine = items[self.rank::self.world_size]
        self._passes = -(-len(items) // self.world_size)
        self._real = len(mine)
        self._done = 0
        pad = (mine or items)[-1:] * (self._passes - len(mine))
        return mine + pad

    def backward(self, loss: torch.Tensor) -> None:
        if self._done >= self._passes:
            raise RuntimeError("DeepSpeedBackend.backward called more often than the micro-batches handed out by "
                               "shard(): take every micro-batch of a mini-batch from engine.shard(...)")
        scale = float(self.world_size) if self._done < self._real else 0.0  # padding adds no gradient
        self._done += 1
        self.ds.set_gradient_accumulation_boundary(self._done == self._passes)
        self.ds.backward(loss * scale, scale_wrt_gas=False)

    def step(self) -> float:
        if self._done != self._passes:
            raise RuntimeError(f"DeepSpeedBackend.step after {self._done} of {self._passes} backward passes: every "
                               "micro-batch from shard() needs its backward before the step")
        self._last_lr = float(self.scheduler.get_last_lr()[0])  # the rate this step uses
        self.ds.step()
        self._passes = self._real = self._done = 0
        norm = self.ds.get_global_grad_norm()  # pre-clip, over every rank's partition
        return float(norm) if norm is not None else float("nan")  # None: extra turned compute_grad_norm off

    def lr(self) -> float:
        return self._last_lr

    # ----- weights -----
    def broadcast_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, full tensor) pairs on rank 0; nothing on the other ranks.

        ZeRO-1/2: every rank holds the full weights, rank 0 yields them without copying. ZeRO-3: the parameters
        are gathered a bucket (``learner.weight_sync.bucket_mb``) at a time and rank 0 yields copies, so no rank
        gathers more than one bucket at once beyond the output embedding (kept whole for the trainer); what the
        caller keeps of the copies is its own memory.
        Under ZeRO-3 this is collective: every rank must iterate it to the end together (followers do it in
        :func:`~gspo_async.learner.distributed.follower_loop` after ``announce_weights()``).
        """
        dtype = self.broadcast_dtype
        named = list(self.model.named_parameters())  # tied weights once
        if self.zero_stage < 3:
            if self.rank == 0:
                for name, p in named:
                    yield name, p.detach().to(dtype)
            return
        yield from self._gathered(named, dtype)

    def _gathered(self, named: list[tuple[str, torch.nn.Parameter]], dtype: Optional[torch.dtype],
                  device: Optional[str] = None) -> Iterator[tuple[str, torch.Tensor]]:
        """ZeRO-3: (name, full copy) on rank 0, gathered a bucket at a time (collective on every rank)."""
        import deepspeed

        for bucket in self._buckets(named):
            params = [p for _, p in bucket]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if self.rank == 0:
                    for name, p in bucket:
                        yield name, p.detach().to(dtype=dtype or p.dtype, device=device or p.device, copy=True)

    def export_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """ZeRO-3: the whole policy on rank 0, on the CPU, in the dtype DeepSpeed computes in (None on the other
        ranks), for ``save_pretrained``; collective. ZeRO-1/2: None (every rank's module holds the weights)."""
        if self.zero_stage < 3:
            return None
        state = dict(self._gathered(list(self.model.named_parameters()), None, device="cpu"))
        if self.rank != 0:
            return None
        for prefix, module in self.model.named_modules():  # buffers are not partitioned: the persistent ones as-is
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = b.detach().cpu()
        return state

    def _buckets(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[list[tuple[str, torch.nn.Parameter]]]:
        buckets: list[list] = [[]]
        size = 0
        for name, p in named:
            nbytes = p.ds_numel * p.element_size()
            if buckets[-1] and size + nbytes > self.bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append((name, p))
            size += nbytes
        return [b for b in buckets if b]

    def evaluation_model(self) -> Optional[torch.nn.Module]:
        """ZeRO-3: every forward of the partitioned module is a collective, so rank 0 cannot generate alone; instead
        every rank takes part in gathering the weights (as for the export) and rank 0 gets a plain copy of the
        policy to evaluate (one whole model of extra memory on rank 0 while it lives; None on the other ranks).
        ZeRO-1/2: the module itself. Collective under ZeRO-3: followers run ``export_state_dict()``."""
        if self.zero_stage < 3:
            return self.model
        state = self.export_state_dict()
        if state is None:
            return None
        with torch.device("meta"):
            copy = type(self.model)(self.model.config)
        copy.load_state_dict(state, strict=False, assign=True)
        if getattr(copy.config, "tie_word_embeddings", False):
            copy.tie_weights()
        own = dict(self.model.named_modules())
        for prefix, module in copy.named_modules():  # buffers, persistent or not (rotary tables), as the policy's
            for name in list(module._buffers):
                module._buffers[name] = own[prefix]._buffers[name]
        missing = [n for n, t in [*copy.named_parameters(), *copy.named_buffers()] if t.is_meta]
        if missing:
            raise RuntimeError(f"the gathered weights miss {missing[:5]}: cannot build the evaluation copy")
        return copy.to(self.model.device).eval()

    # ----- checkpoints -----
    def state_dict(self) -> dict:
        """The schedule state only: the optimiser state is partitioned over the ranks and goes through
        :meth:`save` / :meth:`load` (a DeepSpeed checkpoint)."""
        return {"scheduler": self.scheduler.state_dict(), "zero_stage": self.zero_stage,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if "zero_stage" not in state:
            raise ValueError("this checkpoint was written by the torch engine (learner.engine: torch); resume it "
                             "with that engine, or start the DeepSpeed run from its model/ directory without --resume")
        saved, here = (state["world_size"], state["zero_stage"]), (self.world_size, self.zero_stage)
        if saved != here:
            raise ValueError(f"this checkpoint was written by {saved[0]} rank(s) with ZeRO-{saved[1]}, this run has "
                             f"{here[0]} with ZeRO-{here[1]}: resume with the same `torchrun --nproc_per_node` and "
                             "learner.deepspeed.zero_stage (the optimiser state is partitioned per rank)")
        self.scheduler.load_state_dict(state["scheduler"])

    def save(self, path: str | os.PathLike) -> None:
        """Write this rank's ZeRO partition (and on rank 0 the module state) under `path`. Collective."""
        self.ds.save_checkpoint(os.fspath(path), tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, path: str | os.PathLike) -> None:
        """Restore weights, optimiser partitions and schedule from :meth:`save`'s `path`. Collective; the world
        size and ZeRO stage must be those of the run that saved it."""
        if not (Path(path) / CHECKPOINT_TAG).is_dir():
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {os.fspath(path)!r} (expected the "
                                    f"{CHECKPOINT_TAG!r} directory written by DeepSpeedBackend.save)")
        loaded, _ = self.ds.load_checkpoint(os.fspath(path), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint under {os.fspath(path)!r}")
