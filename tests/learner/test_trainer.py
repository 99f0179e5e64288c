"""The training step: batch layout, log-prob alignment, gradient accumulation, the three correction modes."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.config import Config
from gspo_async.learner.batch import collate_groups
from gspo_async.learner.backends.torch_backend import TorchBackend
from gspo_async.learner.trainer import Trainer, response_logprobs
from gspo_async.protocol.messages import Response, RolloutGroup

V = 40


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float()


def naive_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([list(prompt) + list(response)])
    logits = model(input_ids=ids).logits[0].float() / temperature
    lp = torch.log_softmax(logits, -1)
    p = len(prompt)
    return torch.stack([lp[p + t - 1, tok] for t, tok in enumerate(response)])


def make_groups(model, n_groups=3, G=4, seed=0, temperature=1.0, version=0, exact_logprobs=True):
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        prompt = rng.integers(3, V, size=rng.integers(2, 6)).astype(np.int32)
        responses = []
        for _ in range(G):
            resp = rng.integers(3, V, size=rng.integers(1, 7)).astype(np.int32)
            with torch.no_grad():
                lp = naive_logprobs(model, prompt, resp, temperature).numpy() if exact_logprobs else \
                    -rng.uniform(0.5, 4.0, size=len(resp))
            responses.append(Response.single_version(resp, lp, float(rng.integers(0, 2)), "stop", version))
        groups.append(RolloutGroup(f"g{g}", g, "a", prompt, responses))
    return groups


def test_collate_layout():
    groups = make_groups(tiny_model(), exact_logprobs=False)
    b = collate_groups(groups, pad_id=0)
    r = groups[1].responses[2]
    row = 1 * 4 + 2
    n = len(r.tokens)
    assert b.response_ids[row, :n].tolist() == r.tokens.tolist()
    assert b.response_mask[row].sum() == n
    start = int(b.response_start[row])
    assert b.input_ids[row, start:start + n].tolist() == r.tokens.tolist()
    assert torch.allclose(b.behaviour_logprobs[row, :n], torch.as_tensor(r.logprobs))
    assert (b.token_versions[row, :n] == 0).all() and (b.token_versions[row, n:] == -1).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_naive_per_sequence(temperature):
    model = tiny_model()
    groups = make_groups(model, exact_logprobs=False)
    b = collate_groups(groups, pad_id=0)
    with torch.no_grad():
        lp, ent = response_logprobs(model, b, temperature=temperature, chunk_size=3, compute_entropy=True)
    for i, (g, r) in enumerate((g, r) for g in groups for r in g.responses):
        expect = naive_logprobs(model, g.prompt_tokens, r.tokens, temperature)
        n = len(r.tokens)
        assert torch.allclose(lp[i, :n], expect, atol=1e-5)
        assert (lp[i, n:] == 0).all() and (ent[i, :n] > 0).all()


def cfg_for(**kw):
    base = dict(rollout_batch_size=3, num_return_sequences_in_group=4, response_length=8,
                optim=dict(lr=1e-2, micro_batch_size=12, grad_clip=None),
                importance_sampling="token", pg_clip=0.2)
    base.update(kw)
    return Config.model_validate(base)


def run_step(cfg, seed=0):
    model = tiny_model(seed)
    groups = make_groups(tiny_model(seed), seed=1)
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    metrics = trainer.train_step(groups)
    return model, metrics


def test_gradient_accumulation_equals_one_big_micro_batch():
    # A large Adam eps keeps the update proportional to the gradient, so float noise in near-zero gradient
    # entries is not amplified into lr-sized differences.
    big, m_big = run_step(cfg_for(optim=dict(lr=1e-2, micro_batch_size=12, grad_clip=None, eps=1e-3)))
    small, m_small = run_step(cfg_for(optim=dict(lr=1e-2, micro_batch_size=5, grad_clip=None, eps=1e-3)))
    for (n, a), (_, b) in zip(big.named_parameters(), small.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
    assert m_big["train/loss"] == pytest.approx(m_small["train/loss"], abs=1e-6)


def test_on_policy_first_step_has_ratio_one_and_changes_weights():
    before = tiny_model(0)
    after, metrics = run_step(cfg_for(importance_sampling="seq", pg_clip=None))
    assert metrics["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["train/clipfrac"] == 0.0
    changed = sum(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    assert changed > 0
    for k, v in metrics.items():
        assert np.isfinite(v), k


@pytest.mark.parametrize("correction", ["behaviour", "decoupled", "recompute"])
def test_correction_modes_run_and_report(correction):
    # Behaviour log-probs far from the learner's: behaviour mode sees ratio != 1, recompute sees exactly 1 on its
    # first mini-batch, decoupled reports a truncated importance weight.
    cfg = cfg_for(importance_sampling="seq", pg_clip=None, off_policy=dict(correction=correction, is_weight_cap=2.0))
    model = tiny_model(0)
    groups = make_groups(model, seed=1, exact_logprobs=False)
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    m = trainer.train_step(groups)
    if correction == "behaviour":
        assert abs(m["train/ratio_mean"] - 1.0) > 1e-3
    else:
        assert m["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    if correction == "decoupled":
        assert 0 < m["train/is_weight_max"] <= 2.0
