import json
import math
import time

import numpy as np
import pytest
import torch

from gspo_async.engines.base import Engine, SamplingSettings
from gspo_async.engines.simulated import SimulatedEngine, SimulationSettings

VOCAB, EOS, SPECIAL = 20, 2, (0, 1, 3)  # ids 0..3 special, 4..19 ordinary: K = 16
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10]]


def make(settings=None, seed=0, sleep=False):
    return SimulatedEngine(VOCAB, EOS, settings or SimulationSettings(length_median=6, length_sigma=0.8),
                           special_ids=SPECIAL, seed=seed, sleep=sleep)


def flat(groups):
    return [g for group in groups for g in group]


def test_responses_are_valid_generations():
    engine = make()
    assert isinstance(engine, Engine)
    groups = engine.generate(PROMPTS, 5, SamplingSettings(max_new_tokens=10))
    assert [len(g) for g in groups] == [5, 5, 5]
    for gen in flat(groups):
        assert 1 <= len(gen.tokens) <= 10
        assert len(gen.logprobs) == len(gen.tokens)
        assert all(math.isfinite(lp) and lp <= 0 for lp in gen.logprobs)
        assert gen.logprobs[0] == pytest.approx(-math.log(16))  # uniform over the 16 ordinary ids
        content = gen.tokens[:-1] if gen.finish_reason == "stop" else gen.tokens
        assert all(4 <= t < VOCAB for t in content)  # never a special id inside a response
        if gen.finish_reason == "stop":
            assert gen.tokens[-1] == EOS
        else:
            assert gen.finish_reason == "length" and len(gen.tokens) == 10
        assert gen.version_spans == [(0, 0, len(gen.tokens))]


def test_apply_weights_sets_version_spans_and_check_state():
    engine = make()
    w = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    engine.apply_weights(w, 7)
    assert engine.version == 7
    held = engine.state_dict_for_check()
    assert set(held) == {"a", "b"} and torch.equal(held["a"], w["a"])
    held["a"][0] = 99.0  # a copy: changing it leaves the engine's weights alone
    assert engine.state_dict_for_check()["a"][0] == 0.0
    for gen in flat(engine.generate(PROMPTS[:1], 3, SamplingSettings(max_new_tokens=8))):
        assert gen.version_spans == [(7, 0, len(gen.tokens))]
    with pytest.raises(ValueError, match="non-empty"):
        engine.apply_weights({}, 8)
    with pytest.raises(ValueError, match="version"):
        engine.apply_weights(w, -1)


def test_lengths_follow_the_configured_lognormal():
    engine = make(SimulationSettings(length_median=20, length_sigma=0.5))
    gens = flat(engine.generate([[1, 4]] * 50, 40, SamplingSettings(max_new_tokens=10_000)))
    lengths = np.array([len(g.tokens) for g in gens], dtype=float)
    assert all(g.finish_reason == "stop" for g in gens)
    assert np.median(lengths) == pytest.approx(20, rel=0.1)
    assert np.log(lengths).std() == pytest.approx(0.5, rel=0.1)


def test_long_responses_are_cut_at_max_new_tokens():
    # P(cut) = P(rint(X) > 16) = P(X >= 16.5) = 1 - Phi(ln(16.5 / 20) / 0.5) = Phi(0.3848) = 0.6498
    engine = make(SimulationSettings(length_median=20, length_sigma=0.5))
    gens = flat(engine.generate([[1, 4]] * 50, 40, SamplingSettings(max_new_tokens=16)))
    cut = [g for g in gens if g.finish_reason == "length"]
    assert len(cut) / len(gens) == pytest.approx(0.6498, abs=0.05)
    assert all(len(g.tokens) == 16 and EOS not in g.tokens for g in cut)


def test_sigma_zero_gives_fixed_length():
    engine = make(SimulationSettings(length_median=7, length_sigma=0))
    assert {len(g.tokens) for g in flat(engine.generate(PROMPTS, 4, SamplingSettings(max_new_tokens=50)))} == {7}


def test_same_seeds_repeat_and_different_seeds_differ():
    s = SamplingSettings(max_new_tokens=12, seed=3)
    tokens = lambda e: [g.tokens for g in flat(e.generate(PROMPTS, 4, s))]  # noqa: E731
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    first = tokens(a)
    assert first == tokens(b)
    assert first != tokens(c)
    assert first != tokens(a)  # a second call draws new responses


def test_cost_model_by_hand():
    s = SimulationSettings(prefill_s=0.5, step_s=0.01, token_s=0.001)
    assert s.seconds([3, 10, 5]) == pytest.approx(0.5 + 0.01 * 10 + 0.001 * 18)
    assert s.seconds([]) == 0.0
    engine = make(SimulationSettings(length_median=10, length_sigma=0, prefill_s=0.5, step_s=0.01, token_s=0.001))
    engine.generate(PROMPTS, 2, SamplingSettings(max_new_tokens=50))  # 6 responses of 10 tokens, no sleep
    stats = engine.stats()
    assert stats["generate_s_total"] == pytest.approx(0.5 + 0.01 * 10 + 0.001 * 60)
    assert stats["tokens_total"] == 60


class FakeClock:
    """A monotonic clock that only moves when slept on, or by `tick` per reading (time spent drawing tokens)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick, self.sleeps = 100.0, tick, []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_sleep_is_the_cost_less_the_time_spent_drawing():
    settings = SimulationSettings(length_median=20, length_sigma=0, prefill_s=0.1, step_s=0.005, token_s=0.001)
    expected = 0.1 + 0.005 * 20 + 0.001 * 20 * 6  # 0.32 s for 6 responses of 20 tokens
    clock = FakeClock(tick=0.02)  # the draw itself takes one tick (0.02 s) between the two clock readings
    engine = SimulatedEngine(VOCAB, EOS, settings, special_ids=SPECIAL, clock=clock, sleeper=clock.sleep)
    engine.generate(PROMPTS[:2], 3, SamplingSettings(max_new_tokens=64))
    assert clock.sleeps == [pytest.approx(expected - 0.02)]
    assert engine.stats()["generate_s_total"] == pytest.approx(expected + 0.02)  # slept, plus the final reading

    slow = FakeClock(tick=1.0)  # drawing took longer than the cost: no sleep at all
    engine = SimulatedEngine(VOCAB, EOS, settings, special_ids=SPECIAL, clock=slow, sleeper=slow.sleep)
    engine.generate(PROMPTS[:2], 3, SamplingSettings(max_new_tokens=64))
    assert slow.sleeps == []


def test_real_sleep_lasts_at_least_the_cost():
    # Only the lower bound: a loaded machine may oversleep by any amount, never undersleep.
    settings = SimulationSettings(length_median=20, length_sigma=0, prefill_s=0.05, step_s=0.001, token_s=0.0)
    engine = make(settings, sleep=True)
    start = time.monotonic()
    engine.generate(PROMPTS, 2, SamplingSettings(max_new_tokens=64))
    assert time.monotonic() - start >= 0.05 + 0.001 * 20


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="length_median"):
        SimulationSettings(length_median=0)
    with pytest.raises(ValueError, match="step_s"):
        SimulationSettings(step_s=-1)
    with pytest.raises(ValueError, match="unknown simulation settings"):
        SimulationSettings.from_mapping({"length_mean": 3})
    assert SimulationSettings.from_mapping({"step_s": 2}).step_s == 2.0
    with pytest.raises(ValueError, match="ordinary tokens"):
        SimulatedEngine(3, 2, special_ids=(0, 1))
    engine = make()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, VOCAB]], 1, SamplingSettings())
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], 1, SamplingSettings())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from gspo_async.models.tokenizer import build_char_tokenizer

    path = tmp_path_factory.mktemp("sim-model")
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"vocab_size": len(tokenizer), "eos_token_id": 2}))
    return path


def test_from_model_dir_uses_the_tokenizer(model_dir):
    engine = SimulatedEngine.from_model_dir(model_dir, SimulationSettings(length_median=30), sleep=False)
    assert engine.vocab_size == 100 and engine.eos_id == 2
    gens = flat(engine.generate([[1, 20, 21]], 8, SamplingSettings(max_new_tokens=40)))
    for g in gens:
        text = engine.tokenizer.decode(g.tokens, skip_special_tokens=True)
        assert len(text) == len(g.tokens) - (g.finish_reason == "stop")  # one character per ordinary token


def test_factory_builds_it_when_the_config_allows(model_dir):
    from gspo_async.engines.factory import build_engine
    from gspo_async.config import load_config

    cfg = load_config(None, ["actor.engine=simulated"])
    engine = build_engine(cfg, model_dir, seed=0)
    assert isinstance(engine, SimulatedEngine)
    assert engine.version == -1  # waits for the first weight broadcast, like a fresh transformers engine
