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


# ----- numerics of real models: precision, dropout, logit transforms, schedule -----

def bf16_cfg(precision="mixed", **kw):
    return cfg_for(importance_sampling="seq", pg_clip=None, model=dict(dtype="bfloat16"),
                   learner=dict(precision=precision, total_steps=1),
                   optim=dict(lr=1e-6, num_mini_batches=10, micro_batch_size=12, grad_clip=None), **kw)


def vocabulary_groups() -> list[RolloutGroup]:
    """make_groups' groups with the first prompt replaced by every token id, so every embedding row gets a
    gradient."""
    groups = make_groups(tiny_model(0), seed=1, exact_logprobs=False)
    g = groups[0]
    groups[0] = RolloutGroup(g.group_id, g.prompt_id, g.actor_id, np.arange(V, dtype=np.int32), g.responses)
    return groups


def changed_fraction(before: dict, model: torch.nn.Module) -> float:
    after = dict(model.named_parameters())
    changed = sum(int((before[n] != after[n].detach()).sum()) for n in before)
    return changed / sum(t.numel() for t in before.values())


def test_mixed_bf16_moves_fp32_master_weights_at_lr_1e6():
    """10 AdamW steps at lr 1e-6 on a bf16-configured model: each moves every weight with a gradient by ~lr, far
    below half a bf16 ulp of a weight of ~0.02 (2^-14 ~ 6e-5) but far above an fp32 ulp (~2e-9)."""
    model = tiny_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = bf16_cfg()
    backend = TorchBackend(cfg, model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    metrics = Trainer(cfg, backend, pad_id=0).train_step(vocabulary_groups())
    assert np.isfinite(metrics["train/loss"])
    assert len(backend.optimizer.state) == len(before)
    assert changed_fraction(before, model) > 0.99
    assert backend.state_dict()["optimizer"]["state"][0]["exp_avg"].dtype == torch.float32
    assert float(backend.state_dict()["optimizer"]["state"][0]["step"]) == 10  # ten optimiser steps, one per mini-batch

    # The same 10 steps with bf16 weights and no master copy: most updates are lost (the contrast the test needs).
    pure = tiny_model(0).to(torch.bfloat16)
    start = {n: p.detach().clone() for n, p in pure.named_parameters()}
    with pytest.warns(UserWarning, match="without fp32 master weights"):
        pure_cfg = bf16_cfg(precision="pure")
    Trainer(pure_cfg, TorchBackend(pure_cfg, pure), pad_id=0).train_step(vocabulary_groups())
    assert changed_fraction(start, pure) < 0.5


def test_mixed_precision_refuses_low_precision_weights():
    model = tiny_model(0).to(torch.bfloat16)
    with pytest.raises(ValueError, match="learner.precision: mixed trains fp32 master weights") as err:
        TorchBackend(bf16_cfg(), model)
    assert "load the model in float32" in str(err.value)


def test_mixed_bf16_autocasts_passes_and_broadcasts_in_the_actors_dtype():
    cfg = bf16_cfg()
    model = tiny_model(0)
    backend = TorchBackend(cfg, model)
    with backend.autocast():
        assert model(input_ids=torch.tensor([[3, 4, 5]])).logits.dtype == torch.bfloat16
    sent = dict(backend.broadcast_tensors())
    assert {t.dtype for t in sent.values()} == {torch.bfloat16}
    assert torch.equal(sent["model.norm.weight"], model.model.norm.weight.detach().to(torch.bfloat16))
    vllm = Config.model_validate({**cfg.to_dict(), "actor": {"engine": "vllm", "vllm": {"dtype": "float16"}}})
    assert {t.dtype for _, t in TorchBackend(vllm, tiny_model(0)).broadcast_tensors()} == {torch.float16}


def test_fp16_trains_with_a_gradient_scaler():
    cfg = cfg_for(model=dict(dtype="float16"), optim=dict(lr=1e-3, micro_batch_size=12, grad_clip=None))
    model = tiny_model(0)
    backend = TorchBackend(cfg, model)
    assert backend.scaler.is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    m = Trainer(cfg, backend, pad_id=0).train_step(make_groups(tiny_model(0), seed=1))
    assert np.isfinite(m["train/grad_norm"]) and backend.skipped_steps == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "scale" in backend.state_dict()["scaler"]


def dropout_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, attention_dropout=0.1)
    return AutoModelForCausalLM.from_config(cfg).float()


def on_policy_groups(model: torch.nn.Module) -> list[RolloutGroup]:
    """Groups whose behaviour log-probs are the learner's own (eval mode), so the first ratio is 1 by definition."""
    groups = make_groups(model, seed=1, exact_logprobs=False)
    batch = collate_groups(groups, pad_id=0)
    model.eval()
    with torch.no_grad():
        lp = response_logprobs(model, batch, temperature=1.0)[0]
    rows = [r for g in groups for r in g.responses]
    out, i = [], 0
    for g in groups:
        responses = []
        for r in g.responses:
            responses.append(Response.single_version(r.tokens, lp[i, :len(r.tokens)].numpy(), r.reward, "stop", 0))
            i += 1
        out.append(RolloutGroup(g.group_id, g.prompt_id, g.actor_id, g.prompt_tokens, responses))
    assert i == len(rows)
    return out


def test_dropout_is_disabled_so_the_on_policy_ratio_is_one():
    cfg = cfg_for(importance_sampling="seq", pg_clip=None)
    model = dropout_model()
    groups = on_policy_groups(model)
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    m = trainer.train_step(groups)
    # Exactly 1: the training pass (train mode) computes the very numbers the eval-mode pass above did.
    assert m["train/ratio_mean"] == 1.0 and m["train/ratio_max"] == 1.0
    assert m["train/clipfrac"] == 0.0

    # The same step with the attention dropout put back: the ratio leaves 1 (what the fix prevents).
    model = dropout_model()
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    assert abs(trainer.train_step(groups)["train/ratio_mean"] - 1.0) > 1e-4

    # The training passes run in train mode even when the model was left in eval mode (the learner's evaluation
    # does that between steps): the step switches it back only then, and with the dropout back the ratio leaves 1.
    model = dropout_model()
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.eval()
    assert abs(trainer.train_step(groups)["train/ratio_mean"] - 1.0) > 1e-4
    assert model.training


def gemma2_model(softcap: float = 5.0) -> torch.nn.Module:
    from transformers import Gemma2Config

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=softcap,
                       eos_token_id=1, pad_token_id=0, bos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).float()
    with torch.no_grad():  # a random init gives logits of a few units: widen them so the cap of 5 bends them
        model.get_output_embeddings().weight.mul_(20.0)
    return model.eval()


def test_softcapped_learner_logprobs_equal_the_actor_engines():
    from types import SimpleNamespace

    from gspo_async.algo.logprobs import IDENTITY
    from gspo_async.engines.base import SamplingSettings
    from gspo_async.engines.hf import HFEngine
    from gspo_async.models.logits import logit_transform

    model = gemma2_model()
    engine = HFEngine((model, SimpleNamespace(eos_token_id=1, pad_token_id=0)), seed=3)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    gens = engine.generate(prompts, 3, SamplingSettings(temperature=0.8, max_new_tokens=6))
    groups = [RolloutGroup(f"g{i}", i, "a", np.asarray(p, dtype=np.int32),
                           [Response.single_version(g.tokens, g.logprobs, 0.0, g.finish_reason, 0) for g in group])
              for i, (p, group) in enumerate(zip(prompts, gens))]
    batch = collate_groups(groups, pad_id=0)
    transform = logit_transform(model.config)
    assert transform.softcap == 5.0
    with torch.no_grad():
        chunked = response_logprobs(model, batch, temperature=0.8, transform=transform, chunk_size=4)[0]
        own = response_logprobs(model, batch, temperature=0.8, path="model")[0]
        plain = response_logprobs(model, batch, temperature=0.8, transform=IDENTITY)[0]
    mask = batch.response_mask
    actor = batch.behaviour_logprobs
    assert float((chunked - actor)[mask].abs().max()) < 1e-5
    assert float((own - actor)[mask].abs().max()) < 1e-5
    assert float((plain - actor)[mask].abs().max()) > 1e-2  # without the cap the log-probs are not the actor's


@pytest.mark.parametrize("kind", ["granite", "cohere"])
def test_scaled_logit_architectures_match_their_own_forward(kind):
    from transformers import CohereConfig, GraniteConfig

    from gspo_async.models.logits import logit_transform

    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=64)
    cfg = GraniteConfig(logits_scaling=4.0, **common) if kind == "granite" else CohereConfig(logit_scale=0.25, **common)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    batch = collate_groups(make_groups(model, exact_logprobs=False), pad_id=0)
    with torch.no_grad():
        chunked = response_logprobs(model, batch, temperature=0.7, transform=logit_transform(model.config))[0]
        own = response_logprobs(model, batch, temperature=0.7, path="model")[0]
    assert logit_transform(model.config).scale == 0.25
    assert float((chunked - own)[batch.response_mask].abs().max()) < 1e-5


def test_unknown_architecture_is_refused_by_name_unless_the_model_path_is_chosen():
    from transformers import GPT2Config

    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    cfg = cfg_for(importance_sampling="seq", pg_clip=None)
    with pytest.raises(ValueError, match="model type 'gpt2'") as err:
        Trainer(cfg, TorchBackend(cfg, gpt2), pad_id=0)
    assert "model.logprob_path: model" in str(err.value)
    own = Config.model_validate({**cfg.to_dict(), "model": {"logprob_path": "model"}})
    groups = make_groups(gpt2.eval(), seed=1)  # behaviour log-probs from the model's own forward
    m = Trainer(own, TorchBackend(own, gpt2), pad_id=0).train_step(groups)
    assert m["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # dropout (0.1 in GPT-2's config) is off too


def test_schedule_counts_real_optimiser_steps_and_lr_is_the_rate_used():
    """One group of 2 sequences with num_mini_batches 4 takes 2 optimiser steps per training step, so 3 training
    steps are 6 scheduler steps: linear decay from lr over 6 steps uses lr * (6 - s) / 6 at step s = 0..5."""
    from gspo_async.learner.backends.torch_backend import optimizer_steps_per_train_step

    cfg = cfg_for(rollout_batch_size=1, num_return_sequences_in_group=2,
                  optim=dict(lr=0.6, schedule="linear", num_mini_batches=4, micro_batch_size=2, grad_clip=None),
                  learner=dict(total_steps=3))
    assert optimizer_steps_per_train_step(cfg) == 2
    model = tiny_model(0)
    backend = TorchBackend(cfg, model)
    trainer = Trainer(cfg, backend, pad_id=0)
    assert backend.lr() == pytest.approx(0.6)  # before any step: the rate the first will use
    reported = []
    for step in range(3):
        groups = make_groups(model, n_groups=1, G=2, seed=step, exact_logprobs=False)
        reported.append(trainer.train_step(groups)["train/lr"])
    assert reported == pytest.approx([0.6 * 5 / 6, 0.6 * 3 / 6, 0.6 * 1 / 6])  # the second step of each pair
    assert backend.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the decay completed
