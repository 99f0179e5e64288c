"""Resume fidelity on the torch backend: a run stopped after a checkpoint and resumed follows the trajectory of an
uninterrupted run bit for bit.

The real Learner is built in this process (its endpoint and weight store bind loopback ports; no process is
started) and driven step by step the way its run loop drives it, with a scripted actor in place of the network:
prompts are leased from the learner's coordinator, answered with groups drawn deterministically from each prompt's
id, offered to the coordinator, taken, trained on by the learner's trainer, marked trained, and the version is
advanced. The interrupted run saves with `Learner.checkpoint` (what the learner saves on SIGTERM and every
`checkpoint.every` steps), is closed, and a new `Learner(cfg, resume=True)` loads it. What must carry over: the
weights, AdamW's moments and step count, the learning-rate schedule mid-warm-up, the running reward statistics,
the trainer's mini-batch shuffling generator, the global RNGs, the prompt stream's position (data order) and the
coordinator's counters.

Bit for bit is achievable here (float32 on CPU, one thread, the same operations in the same order; safetensors
round-trips float32 exactly), so the comparison is exact: any difference means resumed state is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.config import load_config
from gspo_async.learner.main import Learner
from gspo_async.models.tokenizer import build_char_tokenizer
from gspo_async.protocol.messages import Response, RolloutGroup
from tests.integration.conftest import ROOT

STEPS, STOP_AT = 5, 2
G = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny Llama with the character tokenizer: training dynamics, not accuracy, are compared."""
    path = tmp_path_factory.mktemp("resume-model")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).float().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_config(model_dir, run_dir):
    return load_config(ROOT / "configs/quickstart.yaml", [
        f"model.path={model_dir}", "model.build_tiny_if_missing=false", f"run_dir={run_dir}",
        "learner.port=0", "learner.weight_store_port=0", "telemetry.dashboard_port=null", "learner.eval_every=0",
        "learner.checkpoint.every=0", f"learner.total_steps={STEPS}", "rollout_batch_size=4",
        f"num_return_sequences_in_group={G}", "response_length=6",
        # every piece of state that must survive: a schedule mid-warm-up, two shuffled mini-batches, running
        # reward statistics (with the reinforce estimator, which running normalisation needs)
        "optim.warmup_steps=3", "optim.schedule=cosine", "optim.num_mini_batches=2", "optim.micro_batch_size=3",
        "optim.lr=0.01", "adv_estimator=reinforce", "reward_norm=running"])


def scripted_group(prompt, vocab: int, version: int) -> RolloutGroup:
    """The group an actor holding weights `version` would send for `prompt`, drawn from the prompt's id alone (so
    both runs see the same)."""
    rng = np.random.default_rng(1000 + prompt.prompt_id)
    responses = []
    for _ in range(G):
        n = int(rng.integers(2, 7))
        tokens = rng.integers(4, vocab, size=n).astype(np.int32)
        responses.append(Response.single_version(tokens, -rng.uniform(0.5, 4.0, size=n), float(rng.integers(0, 3)),
                                                 "stop", version))
    return RolloutGroup(f"g{prompt.prompt_id}", prompt.prompt_id, "scripted", np.asarray(prompt.tokens, np.int32),
                        responses)


def train(learner: Learner, until: int) -> list[dict]:
    """Steps of the learner's run loop up to step `until`, with the scripted actor; returns per-step records."""
    server, coord = learner.server, learner.coordinator
    vocab = learner.model.config.vocab_size
    out = []
    while learner.step < until:
        with server._lock:  # the endpoint's thread shares the coordinator; take its lock as the endpoint does
            coord.touch("scripted")
            prompts, reason = coord.lease("scripted", learner.cfg.rollout_batch_size)
            assert len(prompts) == learner.cfg.rollout_batch_size, reason
            for p in prompts:
                assert coord.offer("scripted", scripted_group(p, vocab, learner.version)) == "accepted"
        batch = server.take_groups(learner.cfg.rollout_batch_size, timeout_s=1.0)
        metrics = learner.trainer.train_step(batch)
        learner.step += 1
        learner.version += 1
        server.allow_version(learner.version)
        server.set_version(learner.version)
        server.mark_trained(batch)
        learner.record_ended(server.drain_journal())
        out.append({"prompts": [p.prompt_id for p in prompts], "torch_rng": torch.rand(1).item(),
                    "numpy_rng": float(np.random.random()),
                    **{k: v for k, v in metrics.items() if isinstance(v, float)}})
    return out


def open_learner(cfg, resume: bool = False) -> Learner:
    learner = Learner(cfg, resume=resume)
    learner.coordinator.register("scripted", "i0", "scripted")
    return learner


def final_state(learner: Learner) -> dict:
    counters = learner.coordinator.counters()
    return {"params": {k: v.detach().clone() for k, v in learner.model.state_dict().items()},
            "optimizer": learner.engine.optimizer.state_dict(), "lr": learner.engine.lr(),
            "running": learner.trainer.running.state_dict(), "generator": learner.trainer.generator.get_state(),
            "counters": {k: counters[k] for k in ("prompts_issued", "prompts_trained", "groups_accepted")}}


def test_stopped_and_resumed_run_matches_the_uninterrupted_run_bit_for_bit(model_dir, tmp_path):
    torch.manual_seed(7), np.random.seed(7)
    full = open_learner(make_config(model_dir, tmp_path / "full"))
    try:
        full_steps = train(full, STEPS)
        want = final_state(full)
    finally:
        full.close()

    torch.manual_seed(7), np.random.seed(7)
    cfg = make_config(model_dir, tmp_path / "resumed")
    first = open_learner(cfg)
    try:
        steps = train(first, STOP_AT)
        first.server.close_intake()
        first.checkpoint()  # what a SIGTERM'd learner saves
    finally:
        first.close()
    torch.manual_seed(99), np.random.seed(99)  # a new process: its own fresh RNG state, replaced by the restore
    second = open_learner(cfg, resume=True)
    try:
        assert second.step == STOP_AT and second.version == STOP_AT
        steps += train(second, STEPS)
        got = final_state(second)
    finally:
        second.close()

    assert [s["prompts"] for s in steps] == [s["prompts"] for s in full_steps]  # data order
    for i, (a, b) in enumerate(zip(steps, full_steps)):
        assert a == b, f"step {i + 1} differs: { {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)} }"
    for name, tensor in want["params"].items():
        assert torch.equal(got["params"][name], tensor), f"parameter {name} differs after the resume"
    for pid, state in want["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][pid][key]), torch.as_tensor(value)), key
    assert got["lr"] == want["lr"] and got["running"] == want["running"] and got["counters"] == want["counters"]
    assert torch.equal(got["generator"], want["generator"])
