"""One learner rank of tests/learner/test_deepspeed.py: a few GSPO steps on fixed synthetic groups.

``--engine torch`` trains with the plain torch engine (the test also calls :func:`run` in its own process);
``--engine deepspeed`` under ``torchrun --nproc_per_node=N`` makes rank 0 drive the steps through the command
channel of :mod:`gspo_async.learner.distributed` while the other ranks run ``follower_loop`` (without torchrun it
is a world of one). Rank 0 writes the final weights, the per-step metrics and the engine's construction time to
``--out``; with ``--save-after`` also the weights at the save and the Hugging Face export it wrote (gathered on
rank 0 under ZeRO-3), which ``--resume`` starts from, as the learner does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from gspo_async.config import config_from_dict  # noqa: E402
from gspo_async.learner.backends import build_backend  # noqa: E402
from gspo_async.learner.trainer import Trainer  # noqa: E402
from gspo_async.protocol.messages import Response, RolloutGroup  # noqa: E402

V = 64  # vocabulary
GROUPS, G = 4, 4  # groups per step, responses per group: 16 sequences, 2 mini-batches of 8, micro-batches of 3


def tiny_model(tied: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(cfg).float()


def make_config(engine: str, zero_stage: int, steps: int, extra: dict, correction: str):
    return config_from_dict(dict(
        rollout_batch_size=GROUPS, num_return_sequences_in_group=G, response_length=8, importance_sampling="seq",
        pg_clip=0.2, seed=0, off_policy=dict(correction=correction),
        optim=dict(lr=3e-3, weight_decay=0.1, warmup_steps=1, schedule="cosine", grad_clip=0.5, num_mini_batches=2,
                   micro_batch_size=3),
        learner=dict(engine=engine, total_steps=steps, deepspeed=dict(zero_stage=zero_stage, extra=extra), eval_every=0,
                     weight_sync=dict(bucket_mb=0.01))))  # ~10 KB buckets: several ZeRO-3 gathers


def make_batches(model: torch.nn.Module, steps: int) -> list[list[RolloutGroup]]:
    """`steps` batches of random prompts/responses, behaviour log-probs from the initial model (ratio 1 at step 1)."""
    rng = np.random.default_rng(1)
    batches = []
    for step in range(steps):
        groups = []
        for g in range(GROUPS):
            prompt = rng.integers(3, V, size=int(rng.integers(2, 6))).astype(np.int32)
            responses = []
            for _ in range(G):
                resp = rng.integers(3, V, size=int(rng.integers(1, 8))).astype(np.int32)
                ids = torch.tensor([list(prompt) + list(resp)])
                with torch.no_grad():
                    lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                p = len(prompt)
                logprobs = np.array([float(lp[p + t - 1, tok]) for t, tok in enumerate(resp)], dtype=np.float32)
                responses.append(Response.single_version(resp, logprobs, float(rng.normal()), "stop", step))
            groups.append(RolloutGroup(f"s{step}g{g}", step * GROUPS + g, "a0", prompt, responses))
        batches.append(groups)
    return batches


def run(engine_name: str, *, zero: int = 2, steps: int = 3, tied: bool = False, correction: str = "behaviour",
        persist_threshold: int | None = None, save_after: int = 0, resume: bool = False,
        ckpt: Path | None = None, eval_check: bool = False) -> dict | None:
    """Train `steps` steps (from the checkpoint in `ckpt` when `resume`); rank 0 returns weights and metrics."""
    extra = {}
    if persist_threshold is not None:  # 0: ZeRO-3 partitions even the smallest tensors
        extra = {"zero_optimization": {"stage3_param_persistence_threshold": persist_threshold}}
    cfg = make_config(engine_name, zero, steps, extra, correction)
    model = tiny_model(tied)
    batches = make_batches(model, steps)
    if resume and (ckpt / "model").is_dir():  # the learner resumes from the checkpoint's Hugging Face export
        model = AutoModelForCausalLM.from_pretrained(ckpt / "model").float()
    t0 = time.perf_counter()
    engine = build_backend(cfg, model)
    init_s = time.perf_counter() - t0
    trainer = Trainer(cfg, engine, pad_id=0)
    distributed = engine_name == "deepspeed"
    if distributed:
        from gspo_async.learner.distributed import (announce_export, announce_save, announce_weights,
                                                    broadcast_batch, broadcast_object, follower_loop)

    start = 0
    if resume:
        if distributed:  # the followers resume from whatever rank 0 chose
            ckpt = broadcast_object(ckpt if engine.rank == 0 else None)
        state = torch.load(ckpt / "trainer.pt", weights_only=False)
        engine.load_state_dict(state["engine"])
        trainer.generator.set_state(state["generator"])
        if distributed:
            engine.load(ckpt / "deepspeed")
        start = state["step"]

    if engine.rank != 0:
        follower_loop(trainer)
        return None
    metrics = []
    at_save = None
    for step in range(start, steps):
        if distributed:
            broadcast_batch(batches[step])
        m = trainer.train_step(batches[step])
        metrics.append({k: m[k] for k in ("train/grad_norm", "train/lr")})
        if step + 1 == save_after:
            ckpt.mkdir(parents=True, exist_ok=True)
            state = None
            if distributed:
                announce_export()
                state = engine.export_state_dict()
                announce_weights()
            at_save = {name: t.clone() for name, t in engine.broadcast_tensors()}
            engine.model.save_pretrained(ckpt / "model", state_dict=state)
            if distributed:
                announce_save(ckpt / "deepspeed")
                engine.save(ckpt / "deepspeed")
            torch.save({"engine": engine.state_dict(), "generator": trainer.generator.get_state(),
                        "step": step + 1}, ckpt / "trainer.pt")
    eval_logits = None
    if eval_check:  # what held-out evaluation runs on: under ZeRO-3 a copy gathered with every rank's help
        if distributed:
            announce_export()
        with torch.no_grad():
            eval_logits = engine.evaluation_model()(input_ids=torch.tensor([[5, 9, 3, 17, 2]])).logits.clone()
    if distributed:
        announce_weights()
    weights = {name: t.clone() for name, t in engine.broadcast_tensors()}
    if distributed:
        broadcast_batch(None)
    return {"weights": weights, "metrics": metrics, "init_s": init_s, "world_size": engine.world_size,
            "at_save": at_save, "eval_logits": eval_logits}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["torch", "deepspeed"], required=True)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--correction", default="behaviour", help="off_policy.correction (decoupled adds no-grad passes)")
    ap.add_argument("--persist-threshold", type=int, default=None, help="ZeRO-3 stage3_param_persistence_threshold")
    ap.add_argument("--save-after", type=int, default=0, help="checkpoint into --ckpt after this many steps")
    ap.add_argument("--resume", action="store_true", help="load --ckpt, then train the remaining steps")
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--eval-check", action="store_true", help="record the evaluation model's logits at the end")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    result = run(a.engine, zero=a.zero, steps=a.steps, tied=a.tied, correction=a.correction,
                 persist_threshold=a.persist_threshold, save_after=a.save_after, resume=a.resume, ckpt=a.ckpt,
                 eval_check=a.eval_check)
    if result is not None:
        torch.save(result, a.out)
    if a.engine == "deepspeed":
        import torch.distributed as dist

        from gspo_async.learner.distributed import close_learner_distributed

        # Both ranks are done with every collective before either destroys its group: a rank that tears its gloo
        # pairs down while the other still finishes a save can abort that one at exit (seen under load).
        dist.barrier()
        close_learner_distributed()


if __name__ == "__main__":
    main()
