"""Token-budget micro-batches: the plan (hand-computed), the trimmed sub-batch, and equality with the padded step."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.algo import LOSS_AGG_MODES
from gspo_async.config import Config, ConfigError, config_from_dict
from gspo_async.learner.backends.torch_backend import TorchBackend
from gspo_async.learner.batch import collate_groups
from gspo_async.learner.microbatch import padded_tokens, padding_fraction, plan_fixed, plan_token_budget
from gspo_async.learner.trainer import Trainer, response_logprobs
from gspo_async.protocol.messages import Response, RolloutGroup

V = 40


# ----- the plan -----
def test_token_budget_plan_by_hand():
    # sorted longest first: 10 (row 0), 8 (1), 2 (2), 2 (3); budget 40. Padded slots + pass_cost x passes:
    #   [10, 8, 2, 2]      40 + 1c      [10, 8] [2, 2]    24 + 2c      [10] [8] [2, 2]   22 + 3c
    #   [10] [8, 2, 2]     34 + 2c      [10] [8] [2] [2]  22 + 4c
    # c = 1: 41, 26, 25, 36, 26 -> [10] [8] [2, 2];  c = 20: 60, 64, 82, 74, 102 -> one pass
    lengths = [10, 8, 2, 2]
    assert plan_token_budget(lengths, 40, pass_cost=1) == [[0], [1], [2, 3]]
    assert plan_token_budget(lengths, 40, pass_cost=20) == [[0, 1, 2, 3]]
    assert padded_tokens(lengths, [[0], [1], [2, 3]]) == 22
    assert padding_fraction(lengths, [[0, 1, 2, 3]]) == pytest.approx(1 - 22 / 40)


def test_token_budget_plan_by_hand_unsorted_input():
    # the same lengths shuffled: positions refer to the input; and a greedy fill ([6, 3] + [3, 3, 3], 21 slots)
    # loses to [6] + [3, 3, 3, 3] (18 slots, no padding) at the same number of passes
    lengths = [3, 6, 3, 3, 3]
    plan = plan_token_budget(lengths, 12, pass_cost=1)
    assert plan == [[1], [0, 2, 3, 4]]
    assert padded_tokens(lengths, plan) == 18 and padding_fraction(lengths, plan) == 0.0


def test_fixed_plan_and_its_padding():
    assert plan_fixed(5, 2) == [[0, 1], [2, 3], [4]]
    lengths = [5, 1, 3, 8, 2]
    # [5, 1] -> 10 slots, [3, 8] -> 16, [2] -> 2: 28 slots for 19 real tokens
    assert padded_tokens(lengths, plan_fixed(5, 2)) == 28
    assert padding_fraction(lengths, plan_fixed(5, 2)) == pytest.approx(1 - 19 / 28)


def test_token_budget_plan_covers_every_row_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=257).tolist()
    plan = plan_token_budget(lengths, 1024)
    assert sorted(i for mb in plan for i in mb) == list(range(257))
    for mb in plan:
        assert len(mb) * max(lengths[i] for i in mb) <= 1024
    # sorting packs tighter than the fixed plan of the same mean micro-batch size in the given order
    fixed = plan_fixed(257, -(-257 // len(plan)))
    assert padded_tokens(lengths, plan) < padded_tokens(lengths, fixed)


def test_plan_rejects_a_row_longer_than_the_budget():
    with pytest.raises(ValueError, match="prompt_length \\+ response_length"):
        plan_token_budget([4, 11, 2], 10)
    with pytest.raises(ValueError):
        plan_fixed(3, 0)


def test_config_rejects_a_budget_below_the_longest_sequence():
    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):
        config_from_dict({"prompt_length": 16, "response_length": 8, "optim": {"max_tokens_per_micro_batch": 20}})
    cfg = config_from_dict({"prompt_length": 16, "response_length": 8, "optim": {"max_tokens_per_micro_batch": 24}})
    assert cfg.optim.max_tokens_per_micro_batch == 24


# ----- the batch -----
def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float()


def long_tail_groups(n_groups=4, G=4, seed=1):
    """Groups whose response lengths range from 0 to 20 tokens (one long response per group), random log-probs."""
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        prompt = rng.integers(3, V, size=rng.integers(2, 8)).astype(np.int32)
        responses = []
        for i in range(G):
            n = 20 if i == 0 else int(rng.integers(0 if g == 0 else 1, 6))
            resp = rng.integers(3, V, size=n).astype(np.int32)
            responses.append(Response.single_version(resp, -rng.uniform(0.5, 4.0, size=n), float(rng.integers(0, 2)),
                                                     "stop", 0))
        groups.append(RolloutGroup(f"g{g}", g, "a", prompt, responses))
    return groups


def test_trimmed_sub_batch_cuts_to_its_longest_row_and_keeps_logprobs():
    model = tiny_model()
    batch = collate_groups(long_tail_groups(), pad_id=0)
    short = torch.tensor([1, 2, 5])  # rows with no 20-token response
    sub = batch.select(short).trimmed()
    assert sub.input_ids.shape[1] == int(batch.seq_lengths[short].max()) < batch.input_ids.shape[1]
    assert sub.response_ids.shape[1] == int(batch.response_mask[short].sum(1).max())
    with torch.no_grad():
        full = response_logprobs(model, batch, temperature=1.0)[0]
        cut = response_logprobs(model, sub, temperature=1.0)[0]
    T = sub.response_ids.shape[1]
    assert torch.allclose(full[short][:, :T], cut, atol=1e-5)


class GradRecorder(TorchBackend):
    """The real backend, keeping a copy of the accumulated gradient at every optimiser step."""

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        self.grads: list[torch.Tensor] = []

    def step(self) -> float:
        self.grads.append(torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                                     for p in self.model.parameters()]))
        return super().step()


def step_with(optim: dict, **kw):
    base = dict(rollout_batch_size=4, num_return_sequences_in_group=4, prompt_length=8, response_length=20,
                importance_sampling="seq", pg_clip=None, optim=dict(lr=1e-2, grad_clip=None, **optim))
    base.update(kw)
    cfg = Config.model_validate(base)
    model = tiny_model(0)
    engine = GradRecorder(cfg, model)
    metrics = Trainer(cfg, engine, pad_id=0).train_step(long_tail_groups())
    return engine.grads, metrics


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("importance_sampling", ["seq", "token"])
def test_token_budget_step_equals_the_padded_step(loss_agg_mode, importance_sampling):
    # Reference: the whole mini-batch in one micro-batch padded to its longest row. Budget 40 tokens splits the
    # 16 rows (up to 27 tokens each) into many micro-batches of different sizes; loss and gradients must agree.
    kw = dict(loss_agg_mode=loss_agg_mode, importance_sampling=importance_sampling,
              pg_clip=0.2 if importance_sampling == "token" else None)
    ref_g, ref_m = step_with(dict(micro_batch_size=16), **kw)
    tok_g, tok_m = step_with(dict(max_tokens_per_micro_batch=40), **kw)
    assert len(ref_g) == len(tok_g) == 1
    assert ref_g[0].abs().max() > 0  # the test can fail: there is a gradient to compare
    assert torch.allclose(ref_g[0], tok_g[0], atol=1e-6, rtol=1e-4)
    assert tok_m["train/loss"] == pytest.approx(ref_m["train/loss"], abs=1e-6, rel=1e-5)
    assert tok_m["train/clipfrac"] == pytest.approx(ref_m["train/clipfrac"], abs=1e-9)
    assert tok_m["train/padding_frac"] < ref_m["train/padding_frac"]


@pytest.mark.parametrize("correction", ["recompute", "decoupled"])
def test_token_budget_with_two_mini_batches_and_proximal_logprobs(correction):
    # pi_prox comes from the no-grad passes, which use the same plan; two optimiser steps per batch.
    kw = dict(off_policy=dict(correction=correction), loss_agg_mode="token-mean")
    ref_g, ref_m = step_with(dict(micro_batch_size=3, num_mini_batches=2), **kw)
    tok_g, tok_m = step_with(dict(max_tokens_per_micro_batch=30, num_mini_batches=2), **kw)
    assert len(ref_g) == len(tok_g) == 2
    for a, b in zip(ref_g, tok_g):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert tok_m["train/ratio_mean"] == pytest.approx(ref_m["train/ratio_mean"], abs=1e-6)
    assert tok_m["train/is_weight_mean"] == pytest.approx(ref_m["train/is_weight_mean"], abs=1e-6)
