"""What training does to the policy, through the real Trainer and TorchBackend on a tiny Llama.

A step must raise the log-probability of rewarded responses and lower that of punished ones, with each reward kept
on its own row through collation and micro-batching; and the trainer's options must act as configured when run
through the trainer: geometric rejection, ppo_epochs > 1, the KL reference, running reward normalisation.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gspo_async.config import Config
from gspo_async.learner.backends.torch_backend import TorchBackend
from gspo_async.learner.batch import collate_groups
from gspo_async.learner.trainer import Trainer
from gspo_async.protocol.messages import Response, RolloutGroup

V, G = 40, 4


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def seq_logprob(model: torch.nn.Module, prompt, response) -> torch.Tensor:
    """Per-token log pi(response | prompt) at temperature 1, [len(response)], by a plain forward pass."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    p = len(prompt)
    return torch.stack([lp[p + t - 1, tok] for t, tok in enumerate(response)])


def groups_with_rewards(model, rewards: list[list[float]], seed: int = 0, behaviour_shift: dict | None = None
                        ) -> list[RolloutGroup]:
    """One group per row of `rewards` (G responses each, different lengths), with the model's exact log-probs as
    behaviour log-probs (on-policy), minus `behaviour_shift[(g, j)]` per token where given."""
    rng = np.random.default_rng(seed)
    out = []
    for g, row in enumerate(rewards):
        prompt = rng.integers(3, V, size=int(rng.integers(2, 6))).astype(np.int32)
        responses = []
        for j, reward in enumerate(row):
            tokens = rng.integers(3, V, size=int(rng.integers(2, 7))).astype(np.int32)
            lp = seq_logprob(model, prompt, tokens).numpy() - (behaviour_shift or {}).get((g, j), 0.0)
            responses.append(Response.single_version(tokens, lp, float(reward), "stop", 0))
        out.append(RolloutGroup(f"g{g}", g, "a", prompt, responses))
    return out


def config(**kw) -> Config:
    # Adam with eps far above the gradients' size moves each weight by about lr * gradient / eps: a plain
    # gradient step, so the direction of each response's log-prob change follows its advantage.
    base = dict(rollout_batch_size=3, num_return_sequences_in_group=G, response_length=8, importance_sampling="seq",
                pg_clip=None, optim=dict(lr=1.0, eps=10.0, micro_batch_size=5, grad_clip=None))
    base.update(kw)
    return Config.model_validate(base)


def logprob_sums(model, groups) -> list[float]:
    return [float(seq_logprob(model, g.prompt_tokens, r.tokens).sum()) for g in groups for r in g.responses]


REWARDS = [[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0]]  # half rewarded in each group: advantages +-1


# ----- rewards stay on their rows ---------------------------------------------------------------------------------

def test_rewards_stay_on_their_rows_through_collation_and_micro_batches():
    model = tiny_model()
    rewards = [[0.1, 0.2, 0.3, 0.4], [1.1, 1.2, 1.3, 1.4], [2.1, 2.2, 2.3, 2.4]]  # each value names its row
    groups = groups_with_rewards(model, rewards, seed=3)
    batch = collate_groups(groups, pad_id=0)
    rows = [(g, r) for g in groups for r in g.responses]
    assert batch.rewards.tolist() == pytest.approx([r.reward for _, r in rows])
    perm = torch.tensor([7, 0, 11, 3, 5])  # a shuffled micro-batch, cut to its own longest row
    sub = batch.select(perm).trimmed()
    for k, i in enumerate(perm.tolist()):
        g, r = rows[i]
        n = len(r.tokens)
        assert float(sub.rewards[k]) == pytest.approx(r.reward)
        assert sub.response_ids[k, :n].tolist() == r.tokens.tolist()
        start = int(sub.response_start[k])
        assert sub.input_ids[k, :start].tolist() == g.prompt_tokens.tolist()
        assert torch.allclose(sub.behaviour_logprobs[k, :n], torch.as_tensor(r.logprobs, dtype=torch.float32))


# ----- a step moves the policy the right way ----------------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True], ids=["rewards", "flipped-rewards"])
def test_a_step_raises_rewarded_and_lowers_punished_responses(flip):
    model = tiny_model()
    rewards = [[1 - x for x in row] if flip else row for row in REWARDS]
    groups = groups_with_rewards(model, rewards, seed=1)
    before = logprob_sums(model, groups)
    cfg = config()
    Trainer(cfg, TorchBackend(cfg, model), pad_id=0).train_step(groups)
    after = logprob_sums(model, groups)
    flat = [r for row in rewards for r in row]
    for i, (b, a, reward) in enumerate(zip(before, after, flat)):
        if reward > 0:  # GRPO advantage = reward minus its group's mean, over the group's std: positive here
            assert a > b, f"row {i} (reward {reward}): log-prob {b:.5f} -> {a:.5f}, should rise"
        else:
            assert a < b, f"row {i} (reward {reward}): log-prob {b:.5f} -> {a:.5f}, should fall"


def test_a_constant_group_does_not_move_the_policy():
    # Equal rewards give every response advantage 0: no gradient, the weights stay bit for bit.
    model = tiny_model()
    groups = groups_with_rewards(model, [[1, 1, 1, 1], [0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]], seed=2)
    before = copy.deepcopy(model.state_dict())
    cfg = config()
    Trainer(cfg, TorchBackend(cfg, model), pad_id=0).train_step(groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----- options run through the trainer ----------------------------------------------------------------------------

def test_rejection_drops_exactly_the_sequences_outside_the_bounds():
    model = tiny_model()
    # Behaviour log-probs below the learner's by 1.0 per token: prox / mu = e (2.72) per token, geometric mean e,
    # above high = 2.0: rejected. A shift of 0.5 gives e^0.5 = 1.65, kept.
    shifts = {(0, 1): 1.0, (1, 2): 1.0, (2, 0): 0.5}
    groups = groups_with_rewards(model, REWARDS, seed=1, behaviour_shift=shifts)
    cfg = config(off_policy=dict(correction="decoupled", rejection=dict(low=0.5, high=2.0)))
    m = Trainer(cfg, TorchBackend(cfg, model), pad_id=0).train_step(groups)
    assert m["train/rejected_frac"] == pytest.approx(2 / 12)

    # Bounds wide enough to keep every row: nothing rejected, and a different update (the rejected rows trained).
    wide = config(off_policy=dict(correction="decoupled", rejection=dict(low=1e-6, high=1e6)))
    model2 = tiny_model()
    m2 = Trainer(wide, TorchBackend(wide, model2), pad_id=0).train_step(groups)
    assert m2["train/rejected_frac"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_ppo_epochs_reuse_the_batch_with_its_old_log_probs():
    groups = groups_with_rewards(tiny_model(), REWARDS, seed=1)
    one = config(ppo_epochs=1)
    m1 = Trainer(one, TorchBackend(one, tiny_model()), pad_id=0).train_step(groups)
    two = config(ppo_epochs=2)
    backend = TorchBackend(two, tiny_model())
    m2 = Trainer(two, backend, pad_id=0).train_step(groups)
    # Two passes, one optimiser step each (num_mini_batches = 1).
    assert [s["step"] for s in backend.optimizer.state.values()][0] == 2
    # On-policy, one pass: every ratio is exactly 1. The second pass sees the weights after the first update
    # against the same old log-probs: ratios move away from 1.
    assert m1["train/ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert m2["train/ratio_max"] > 1.0 + 1e-4


def test_kl_reference_is_zero_against_itself_and_k3_against_another_model():
    model = tiny_model(0)
    groups = groups_with_rewards(model, REWARDS, seed=1)
    cfg = config(use_kl_loss=True, kl_loss_coef=0.1, loss_agg_mode="token-mean")
    m = Trainer(cfg, TorchBackend(cfg, model), pad_id=0, ref_model=copy.deepcopy(model)).train_step(groups)
    assert m["train/kl_loss"] == pytest.approx(0.0, abs=1e-7)

    # Against another model: k3 = exp(d) - d - 1 with d = log pi_ref - log pi, token-mean over all tokens, by hand.
    model, ref = tiny_model(0), tiny_model(5)
    k3 = []
    for g in groups:
        for r in g.responses:
            d = seq_logprob(ref, g.prompt_tokens, r.tokens) - seq_logprob(model, g.prompt_tokens, r.tokens)
            k3 += (torch.exp(d) - d - 1).tolist()
    m = Trainer(cfg, TorchBackend(cfg, model), pad_id=0, ref_model=ref).train_step(groups)
    assert m["train/kl_loss"] == pytest.approx(sum(k3) / len(k3), rel=1e-4)


def test_running_reward_normalisation_carries_its_statistics_across_steps():
    cfg = config(adv_estimator="reinforce", reward_norm="running")
    trainer = Trainer(cfg, TorchBackend(cfg, tiny_model()), pad_id=0)
    first = [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1]]
    second = [[3, 3, 2, 3], [2, 3, 3, 3], [3, 2, 2, 2]]
    trainer.train_step(groups_with_rewards(tiny_model(), first, seed=1))
    trainer.train_step(groups_with_rewards(tiny_model(), second, seed=2))
    seen = [x for rows in (first, second) for row in rows for x in row]
    mean = sum(seen) / len(seen)
    var = sum((x - mean) ** 2 for x in seen) / (len(seen) - 1)
    assert trainer.running.count == len(seen) == 24
    assert trainer.running.mean == pytest.approx(mean)
    assert trainer.running.std == pytest.approx(math.sqrt(var))
