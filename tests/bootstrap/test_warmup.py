import itertools
import math

import torch

from gspo_async.models.tiny import tiny_config
from gspo_async.models.tokenizer import build_char_tokenizer
from gspo_async.bootstrap.warmup import answer_loss, supervised_batch, warm_up
from gspo_async.tasks.arithmetic import ArithmeticTask
from gspo_async.tasks.base import PromptItem


def tiny_model(seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(100, hidden_size=32, layers=1, heads=2, max_positions=64))


def test_batch_masks_answer_and_eos_only():
    tok = build_char_tokenizer()
    ids, attn, loss_mask = supervised_batch(tok, [PromptItem(0, "1+2=", "3"), PromptItem(1, "10+20=", "30")])
    assert tok.decode(ids[0][attn[0].bool()]) == "<bos>1+2=3<eos>"
    assert ids[0, -1].item() == tok.pad_token_id  # right padding
    assert tok.decode(ids[1][loss_mask[1].bool()]) == "30<eos>"
    assert loss_mask.sum().item() == 2 + 3


def test_answer_loss_is_mean_cross_entropy_over_masked_tokens():
    tok = build_char_tokenizer()
    model = tiny_model()
    ids, attn, loss_mask = supervised_batch(tok, [PromptItem(0, "1+2=", "3"), PromptItem(1, "10+20=", "30")])
    got = answer_loss(model, ids, attn, loss_mask)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits, -1)
    terms = [-logp[b, t - 1, ids[b, t]].item() for b in range(2) for t in range(ids.shape[1]) if loss_mask[b, t]]
    assert math.isclose(got.item(), sum(terms) / len(terms), rel_tol=1e-5)


def test_warm_up_lowers_the_loss_and_stops_on_request():
    tok = build_char_tokenizer()
    model = tiny_model()
    task = ArithmeticTask(digits=1, eval_size=5)
    probe = list(itertools.islice(task.train_items(9), 64))
    before = answer_loss(model, *supervised_batch(tok, probe)).item()
    calls = []
    result = warm_up(model, tok, task.train_items(0), steps=200, lr=3e-3, batch_size=32, ramp_steps=5,
                     stop=lambda: calls.append(1) or len(calls) == 6, check_every=10)  # fmt: skip
    assert result["steps"] == 60 and len(calls) == 6
    assert answer_loss(model, *supervised_batch(tok, probe)).item() < before - 1.0
    assert not model.training
