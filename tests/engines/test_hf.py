import math

import pytest
import torch

from gspo_async.engines.base import SamplingSettings
from gspo_async.engines.hf import HFEngine, sequence_logprobs
from gspo_async.models.loading import load_model_and_tokenizer

PROMPTS = ["7+5=", "12+34=", "3+99=", "80+8="]  # different lengths: left padding is exercised


@pytest.fixture(scope="module")
def model_dir(tiny_cache):
    # a briefly warmed-up tiny model: it answers with a few digits and then EOS (built once per session)
    return tiny_cache(warmup_steps=150, warmup_target_accuracy=None)


@pytest.fixture
def engine(model_dir):
    return HFEngine(model_dir, seed=11)


@pytest.fixture
def eval_engine(model_dir):
    """An evaluation engine: the only kind that samples with top-p / top-k truncation."""
    return HFEngine(model_dir, seed=11, evaluation=True)


def encode(engine, texts=PROMPTS):
    return [engine.tokenizer(t)["input_ids"] for t in texts]


def flat(groups):
    return [g for group in groups for g in group]


def test_same_seed_repeats_different_seed_differs(model_dir):
    s = SamplingSettings(temperature=1.5, max_new_tokens=6, seed=2)
    a, b, c = HFEngine(model_dir, seed=1), HFEngine(model_dir, seed=1), HFEngine(model_dir, seed=2)
    tokens = lambda e: [g.tokens for g in flat(e.generate(encode(e), 4, s))]  # noqa: E731
    first = tokens(a)
    assert first == tokens(b)
    assert first != tokens(c)
    assert first != tokens(a)  # the next call of the same engine draws new samples
    assert [g.tokens for g in flat(HFEngine(model_dir, seed=1).generate(encode(a), 4, s))] == first


def test_stops_on_eos_or_length(engine):
    eos = engine.tokenizer.eos_token_id
    gens = flat(engine.generate(encode(engine), 8, SamplingSettings(max_new_tokens=6)))
    assert len(gens) == 32
    for g in gens:
        assert len(g.tokens) == len(g.logprobs) >= 1
        assert eos not in g.tokens[:-1]
        if g.finish_reason == "stop":
            assert g.tokens[-1] == eos
        else:
            assert g.finish_reason == "length" and len(g.tokens) == 6 and g.tokens[-1] != eos
    assert any(g.finish_reason == "stop" for g in gens)
    short = flat(engine.generate(encode(engine), 2, SamplingSettings(max_new_tokens=1)))
    assert all(len(g.tokens) == 1 for g in short)
    assert all(g.finish_reason == ("stop" if g.tokens == [eos] else "length") for g in short)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.6, 0, 1.0), (0.8, 3, 0.9)])
def test_logprobs_match_a_plain_forward_pass(eval_engine, temperature, top_k, top_p):
    engine = eval_engine
    prompts = encode(engine)
    sampling = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=7)
    groups = engine.generate(prompts, 3, sampling)
    for prompt, group in zip(prompts, groups):
        for g in group:
            ref = sequence_logprobs(engine.model, prompt, g.tokens, temperature)
            torch.testing.assert_close(torch.tensor(g.logprobs), ref, atol=1e-4, rtol=0)
            assert all(lp <= 0 for lp in g.logprobs)


def test_greedy_follows_the_argmax_and_reports_temperature_one(engine):
    prompts = encode(engine)
    for prompt, (g,) in zip(prompts, engine.generate(prompts, 1, SamplingSettings(temperature=0.0, max_new_tokens=6))):
        ids = torch.tensor([prompt + g.tokens])
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        assert logits.argmax(-1).tolist() == g.tokens
        torch.testing.assert_close(torch.tensor(g.logprobs), sequence_logprobs(engine.model, prompt, g.tokens, 1.0))


def test_top_k_one_is_greedy_and_top_k_limits_the_support(eval_engine):
    engine = eval_engine
    prompts = encode(engine)
    greedy = [g.tokens for g in flat(engine.generate(prompts, 1, SamplingSettings(temperature=0.0, max_new_tokens=5)))]
    k1 = [g.tokens for g in flat(engine.generate(prompts, 1, SamplingSettings(top_k=1, max_new_tokens=5)))]
    assert k1 == greedy
    prompt = prompts[0]
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    top2 = set(torch.topk(logits, 2).indices.tolist())
    hot = SamplingSettings(temperature=10.0, top_k=2, max_new_tokens=1)  # hot: both kept tokens get drawn
    first = {g.tokens[0] for g in flat(engine.generate([prompt], 200, hot))}
    assert first <= top2 and len(first) == 2


def test_top_p_keeps_the_smallest_set_reaching_p(eval_engine):
    engine = eval_engine
    prompt = encode(engine)[1]
    with torch.no_grad():
        probs = torch.softmax(engine.model(input_ids=torch.tensor([prompt])).logits[0, -1] / 10.0, -1)
    p_sorted, order = probs.sort(descending=True)
    top_p = p_sorted[:3].sum().item() - 1e-3  # the nucleus is exactly the 3 most likely tokens
    s = SamplingSettings(temperature=10.0, top_p=top_p, max_new_tokens=1)
    first = {g.tokens[0] for g in flat(engine.generate([prompt], 400, s))}
    assert first <= set(order[:3].tolist()) and len(first) >= 2


@pytest.mark.parametrize("truncation", [{"top_p": 0.9}, {"top_k": 5}])
def test_training_engine_refuses_truncated_sampling(engine, truncation):
    # Truncated samples are not drawn from the full softmax whose log-probs the learner's ratio uses.
    with pytest.raises(ValueError, match="sampling.top_p: 1.0 and sampling.top_k: 0") as err:
        engine.generate(encode(engine), 1, SamplingSettings(max_new_tokens=2, **truncation))
    assert "evaluation=True" in str(err.value)
    greedy = engine.generate(encode(engine), 1, SamplingSettings(temperature=0.0, top_p=0.9, max_new_tokens=2))
    assert len(greedy) == len(PROMPTS)  # greedy decoding ignores truncation: nothing to refuse


def test_sampling_frequencies_follow_the_softmax(engine):
    prompt = encode(engine)[2]
    probs = torch.softmax(engine.model(input_ids=torch.tensor([prompt])).logits[0, -1] / 2.0, -1)
    gens = flat(engine.generate([prompt], 4000, SamplingSettings(temperature=2.0, max_new_tokens=1)))
    counts = torch.bincount(torch.tensor([g.tokens[0] for g in gens]), minlength=probs.numel()).float()
    top = probs.argsort(descending=True)[:3]
    for t in top.tolist():
        p = probs[t].item()
        assert abs(counts[t].item() / 4000 - p) < 5 * math.sqrt(p * (1 - p) / 4000) + 1e-3


def perturbed(engine, scale=0.5):
    """Random new weights with the model's ties kept (a tied name gets the very tensor of its twin)."""
    gen, new, first = torch.Generator().manual_seed(0), {}, {}
    for k, v in engine.model.state_dict().items():
        twin = first.setdefault(v.data_ptr(), k)
        new[k] = new[twin] if twin != k else v + scale * torch.randn(v.shape, generator=gen)
    return new


def test_apply_weights_changes_outputs_and_version(engine):
    prompts = encode(engine)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=4)
    before = engine.generate(prompts, 1, greedy)
    assert before[0][0].version_spans == [(0, 0, len(before[0][0].tokens))]
    new = perturbed(engine)
    engine.apply_weights(new, version=3)
    assert engine.version == 3
    for k, v in engine.state_dict_for_check().items():
        torch.testing.assert_close(v, new[k], rtol=0, atol=0)
    after = engine.generate(prompts, 1, greedy)
    assert [g.logprobs for g in flat(after)] != [g.logprobs for g in flat(before)]
    assert all(g.version_spans == [(3, 0, len(g.tokens))] for g in flat(after))


def test_apply_weights_is_all_or_nothing(engine):
    current = engine.state_dict_for_check()
    name = next(iter(current))
    bad_shape = {k: torch.zeros_like(v) for k, v in current.items()}
    bad_shape[name] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        engine.apply_weights(bad_shape, version=1)
    with pytest.raises(ValueError, match="unknown weight names"):
        engine.apply_weights({**current, "extra.weight": torch.zeros(1)}, version=1)
    with pytest.raises(ValueError, match="missing"):
        engine.apply_weights({name: current[name]}, version=1)
    tied = perturbed(engine)
    if "lm_head.weight" in tied:
        tied["lm_head.weight"] = tied["lm_head.weight"] + 1.0
        with pytest.raises(ValueError, match="tied weights"):
            engine.apply_weights(tied, version=1)
    assert engine.version == 0
    for k, v in engine.state_dict_for_check().items():
        assert torch.equal(v, current[k])


def test_stats_count_generated_tokens(engine):
    gens = flat(engine.generate(encode(engine), 2, SamplingSettings(max_new_tokens=5)))
    stats = engine.stats()
    assert stats["tokens_total"] == sum(len(g.tokens) for g in gens)
    assert stats["tokens_per_s"] > 0


def test_bad_input_is_rejected(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], 1, SamplingSettings())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 10_000]], 1, SamplingSettings())
    with pytest.raises(ValueError, match="n=0"):
        engine.generate(encode(engine), 0, SamplingSettings())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_sampling_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_engine_shares_a_loaded_model(model_dir):
    model, tok = load_model_and_tokenizer(model_dir)
    e = HFEngine((model, tok), seed=0)
    assert e.model is model
    with pytest.raises(TypeError, match="path"):
        HFEngine(42)
