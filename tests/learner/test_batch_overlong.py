"""Overlong handling in the training step: truncated responses masked out of the loss, the soft penalty on rewards."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.config import Config, ConfigError, config_from_dict
from gspo_async.learner.backends.torch_backend import TorchBackend
from gspo_async.learner.batch import collate_groups
from gspo_async.learner.trainer import Trainer
from gspo_async.protocol.messages import Response, RolloutGroup

V = 40
RESPONSE_LENGTH = 8


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float()


def groups_with(lengths, rewards, seed=1, tokens_of=None):
    """One group per row of `lengths` / `rewards`; a response of RESPONSE_LENGTH tokens is truncated."""
    rng = np.random.default_rng(seed)
    out = []
    for g, (ls, rs) in enumerate(zip(lengths, rewards)):
        prompt = rng.integers(3, V, size=4).astype(np.int32)
        responses = []
        for i, (n, r) in enumerate(zip(ls, rs)):
            tokens = rng.integers(3, V, size=n).astype(np.int32)
            if tokens_of is not None and (g, i) in tokens_of:
                tokens = tokens_of[(g, i)]
            responses.append(Response.single_version(tokens, -rng.uniform(0.5, 3.0, size=n), r,
                                                     "length" if n == RESPONSE_LENGTH else "stop", 0))
        out.append(RolloutGroup(f"g{g}", g, "a", prompt, responses))
    return out


LENGTHS = [[3, 8, 5, 8], [2, 7, 8, 4]]
REWARDS = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]


def grad_of(cfg_kw, groups):
    base = dict(rollout_batch_size=2, num_return_sequences_in_group=4, prompt_length=8,
                response_length=RESPONSE_LENGTH, importance_sampling="token", pg_clip=0.2,
                optim=dict(lr=1e-2, grad_clip=None, micro_batch_size=8))
    base.update(cfg_kw)
    cfg = Config.model_validate(base)
    model = tiny_model()
    trainer = Trainer(cfg, TorchBackend(cfg, model), pad_id=0)
    grads = {}
    orig_step = trainer.engine.step

    def step():
        grads["g"] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return orig_step()

    trainer.engine.step = step
    metrics = trainer.train_step(groups)
    return grads["g"], metrics


def test_collate_marks_truncated_rows():
    b = collate_groups(groups_with(LENGTHS, REWARDS), pad_id=0)
    assert b.truncated.tolist() == [False, True, False, True, False, False, True, False]


@pytest.mark.parametrize("masked", [True, False])
def test_truncated_responses_contribute_no_loss_when_masked(masked):
    # Changing the tokens of a truncated response (same length, reward, log-probs) changes the gradient only when
    # truncated responses are in the loss.
    other = {(0, 1): np.full(8, 7, dtype=np.int32), (1, 2): np.full(8, 9, dtype=np.int32)}
    g1, m1 = grad_of(dict(mask_truncated_responses=masked), groups_with(LENGTHS, REWARDS))
    g2, _ = grad_of(dict(mask_truncated_responses=masked), groups_with(LENGTHS, REWARDS, tokens_of=other))
    assert torch.allclose(g1, g2, atol=1e-7) == masked
    assert m1["response/truncated_frac"] == pytest.approx(3 / 8)


def test_overlong_penalty_equals_shifting_the_rewards_by_hand():
    # response_length 8, buffer 4, factor 0.5: lengths 3, 2, 4 -> 0; 5 -> -0.125; 7 -> -0.375; 8 -> -0.5
    penalty = {3: 0.0, 2: 0.0, 4: 0.0, 5: -0.125, 7: -0.375, 8: -0.5}
    shifted = [[r + penalty[n] for n, r in zip(ls, rs)] for ls, rs in zip(LENGTHS, REWARDS)]
    g_pen, m_pen = grad_of(dict(overlong_penalty=dict(enabled=True, buffer_length=4, penalty_factor=0.5)),
                           groups_with(LENGTHS, REWARDS))
    g_hand, _ = grad_of({}, groups_with(LENGTHS, shifted))
    g_none, _ = grad_of({}, groups_with(LENGTHS, REWARDS))
    assert torch.allclose(g_pen, g_hand, atol=1e-6)
    assert not torch.allclose(g_pen, g_none, atol=1e-6)
    assert m_pen["reward/overlong_penalty"] == pytest.approx(sum(penalty[n] for ls in LENGTHS for n in ls) / 8)
    assert m_pen["reward/mean"] == pytest.approx(np.mean(REWARDS))  # the actors' rewards, as scored


def test_config_checks_the_buffer_against_the_budget():
    with pytest.raises(ConfigError, match="buffer_length"):
        config_from_dict({"response_length": 8, "overlong_penalty": {"enabled": True, "buffer_length": 9}})
    assert config_from_dict({"response_length": 8, "mask_truncated_responses": True}).mask_truncated_responses
