"""Policy loss and aggregation against hand-computed values (research notes on GSPO, section 7) and
finite differences, plus property tests."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gspo_async.algo
from gspo_async.algo.losses import aggregate, kl_k3, policy_loss

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def fixture():
    """old logp = log[[0.5, 0.4, 0.9, pad], [0.3, 0.2, 0.6, 0.7]], mask [[1,1,1,0],[1,1,1,1]], A = [1.5, -0.5]."""
    old = torch.log(torch.tensor([[0.5, 0.4, 0.9, 1.0], [0.3, 0.2, 0.6, 0.7]], dtype=F64))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.5, -0.5], dtype=F64)
    return old, mask, adv


def loss_and_grad(logprobs, *args, **kwargs):
    lp = logprobs.detach().clone().requires_grad_()
    loss, metrics = policy_loss(lp, *args, **kwargs)
    loss.backward()
    return loss.detach(), lp.grad, metrics


def paper_gspo_loss(logprobs, old, adv, mask, eps_low, eps_high):
    """GSPO Eq. 5 written directly: s_i = exp(mean_t delta), gradient through the mean, mean over sequences."""
    m = mask.bool()
    n = m.sum(-1)
    delta = torch.where(m, logprobs - old, 0.0)
    s = torch.exp(delta.sum(-1) / n.clamp(min=1))
    per_seq = -torch.minimum(s * adv, s.clamp(1 - eps_low, 1 + eps_high) * adv)
    return per_seq[n > 0].mean()


def test_exported_from_package():
    assert gspo_async.algo.policy_loss is policy_loss


# --- case 1: identical policies ---------------------------------------------------------------------------
def test_identical_policies():
    old, mask, adv = fixture()
    loss, grad, metrics = loss_and_grad(old, old, adv, mask)
    assert loss.item() == pytest.approx(-0.5, abs=1e-12)
    expected = torch.tensor([[-0.25] * 3 + [0.0], [0.0625] * 4], dtype=F64)
    torch.testing.assert_close(grad, expected)
    assert metrics["clipfrac"] == 0 and metrics["ratio_mean"] == 1.0 and metrics["approx_kl"] == 0.0


# --- case 2: geometric mean, padding ignored ---------------------------------------------------------------
def test_geometric_mean_ratio_ignores_padding():
    old, mask, adv = fixture()
    lp = old.clone()
    lp[0, :3] += 0.01
    lp[0, 3] += 5.0  # pad
    lp[1] -= 0.002
    _, _, metrics = loss_and_grad(lp, old, adv, mask)
    assert metrics["ratio_max"] == pytest.approx(1.010050, abs=1e-6)
    assert 2 * metrics["ratio_mean"] - metrics["ratio_max"] == pytest.approx(0.998002, abs=1e-6)
    lp_other_pad = lp.clone()
    lp_other_pad[0, 3] = -1e9
    assert loss_and_grad(lp_other_pad, old, adv, mask)[0] == loss_and_grad(lp, old, adv, mask)[0]


# --- cases 3, 4: sequence clipping --------------------------------------------------------------------------
def case2_logprobs():
    old, mask, adv = fixture()
    lp = old.clone()
    lp[0, :3] += 0.01
    lp[1] -= 0.002
    return lp, old, adv, mask


def test_sequence_clipping_paper_ranges():
    lp, old, adv, mask = case2_logprobs()
    loss, grad, metrics = loss_and_grad(lp, old, adv, mask, pg_clip_low=3e-4, pg_clip_high=4e-4)
    assert loss.item() == pytest.approx(-0.500375, abs=1e-9)  # (-1.5 * 1.0004 + 0.5 * 0.9997) / 2
    assert torch.equal(grad, torch.zeros_like(grad))
    assert metrics["clipfrac"] == 1.0 and metrics["clipfrac_seq"] == 1.0


def test_wide_clip_leaves_ratio_unclipped():
    lp, old, adv, mask = case2_logprobs()
    loss, _, metrics = loss_and_grad(lp, old, adv, mask, pg_clip_low=0.2, pg_clip_high=0.2)
    assert loss.item() == pytest.approx(-0.508037, abs=1e-6)
    assert metrics["clipfrac"] == 0.0


# --- case 5: gradient formula ------------------------------------------------------------------------------
def test_gradient_is_minus_a_s_over_n_b_and_matches_paper_form():
    old, mask, adv = fixture()
    lp = old + torch.tensor([[0.05, -0.02, 0.01, 0.0], [0.03, 0.0, -0.01, 0.02]], dtype=F64)
    _, grad, _ = loss_and_grad(lp, old, adv, mask, pg_clip_low=0.2, pg_clip_high=0.2)
    expected = torch.tensor([[-0.253356] * 3 + [0.0], [0.063128] * 4], dtype=F64)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)
    # central finite differences of the paper's sequence objective give the same gradient
    fd = torch.zeros_like(lp)
    h = 1e-6
    for idx in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 3)]:
        up, down = lp.clone(), lp.clone()
        up[idx] += h
        down[idx] -= h
        diff = paper_gspo_loss(up, old, adv, mask, 0.2, 0.2) - paper_gspo_loss(down, old, adv, mask, 0.2, 0.2)
        fd[idx] = diff / (2 * h)
        assert grad[idx].item() == pytest.approx(fd[idx].item(), abs=1e-8)


# --- case 6: on-policy equivalence -------------------------------------------------------------------------
def test_on_policy_gspo_gradient_equals_grpo():
    old, mask, adv = fixture()
    _, g_seq, _ = loss_and_grad(old, old, adv, mask, importance_sampling="seq")
    _, g_tok, _ = loss_and_grad(old, old, adv, mask, importance_sampling="token", pg_clip_low=0.2, pg_clip_high=0.2)
    assert (g_seq - g_tok).abs().max() < 1e-12


# --- case 8, 9, 10: aggregation ----------------------------------------------------------------------------
AGG_L = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=F64)
AGG_M = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
AGG_EXPECTED = {
    "token-mean": 10 / 6,
    "seq-mean-token-sum": 5.0,
    "seq-mean-token-mean": 1.5,
    "seq-mean-token-sum-norm": 2.5,  # 10 / T with T = 4, no division by the number of sequences
}


@pytest.mark.parametrize("mode", list(AGG_EXPECTED))
def test_aggregation_modes(mode):
    assert aggregate(AGG_L, AGG_M, mode, norm_length=4).item() == pytest.approx(AGG_EXPECTED[mode])


@pytest.mark.parametrize("mode", list(AGG_EXPECTED))
@pytest.mark.parametrize("garbage", [NAN, INF, -INF, 1e30])
def test_masked_garbage_never_counts(mode, garbage):
    L = AGG_L.clone()
    L[0, 2:] = garbage
    L = L.requires_grad_()
    out = aggregate(L, AGG_M, mode, norm_length=4)
    out.backward()
    assert out.item() == pytest.approx(AGG_EXPECTED[mode])
    assert torch.equal(L.grad[~AGG_M], torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("mode", list(AGG_EXPECTED))
def test_empty_sequence_is_excluded(mode):
    # rule: an empty response has ratio 1, loss 0 and is not counted in N_seq
    L = torch.cat([AGG_L, torch.full((1, 4), 7.0, dtype=F64)])
    M = torch.cat([AGG_M, torch.zeros(1, 4, dtype=torch.bool)])
    assert aggregate(L, M, mode, norm_length=4).item() == pytest.approx(AGG_EXPECTED[mode])


def test_empty_sequence_in_policy_loss():
    old, mask, adv = fixture()
    lp = old + 0.01
    base_loss, base_grad, base_metrics = loss_and_grad(lp, old, adv, mask, pg_clip_low=0.2, pg_clip_high=0.2)
    lp3 = torch.cat([lp, torch.full((1, 4), NAN, dtype=F64)])
    old3 = torch.cat([old, torch.full((1, 4), INF, dtype=F64)])
    mask3 = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)])
    adv3 = torch.cat([adv, torch.tensor([3.0], dtype=F64)])
    loss, grad, metrics = loss_and_grad(lp3, old3, adv3, mask3, pg_clip_low=0.2, pg_clip_high=0.2)
    assert loss.item() == pytest.approx(base_loss.item(), abs=1e-15)
    torch.testing.assert_close(grad[:2], base_grad)
    assert torch.equal(grad[2], torch.zeros(4, dtype=F64))
    assert metrics["seqs"] == 2 and metrics["ratio_mean"] == pytest.approx(base_metrics["ratio_mean"])


def test_all_empty_batch_gives_zero_loss_and_zero_grad():
    lp = torch.zeros(2, 3, dtype=F64)
    loss, grad, metrics = loss_and_grad(lp, lp, torch.ones(2, dtype=F64), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad)) and metrics["clipfrac"] == 0.0


def test_sum_norm_needs_a_length_budget():
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(AGG_L, AGG_M, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate(AGG_L, AGG_M, "seq-mean")


# --- case 11: dual clip ------------------------------------------------------------------------------------
def single_token_loss(ratio, adv, **kwargs):
    old = torch.zeros(1, 1, dtype=F64)
    loss, grad, metrics = loss_and_grad(
        torch.full((1, 1), math.log(ratio), dtype=F64), old, torch.tensor([adv], dtype=F64),
        torch.ones(1, 1, dtype=torch.bool), **kwargs,
    )
    return loss.item(), grad.item(), metrics


@pytest.mark.parametrize("ratio, expected", [(0.5, 0.8), (1.0, 1.0), (1.3, 1.3), (1.5, 1.4), (3.0, 1.4)])
def test_dual_clip_roll_constant(ratio, expected):
    kw = dict(pg_clip_low=0.2, pg_clip_high=0.2, dual_clip_loss=True, dual_clip_c=1.4)
    for mode in ("seq", "token"):
        loss, grad, metrics = single_token_loss(ratio, -1.0, importance_sampling=mode, **kw)
        assert loss == pytest.approx(expected)
        if ratio > 1.4:
            assert grad == 0.0 and metrics["dual_clipfrac"] == 1.0


def test_dual_clip_ignores_positive_advantages_and_other_constants():
    kw = dict(pg_clip_low=0.2, pg_clip_high=0.2)
    assert single_token_loss(1.5, 1.0, dual_clip_loss=True, dual_clip_c=1.4, **kw)[0] == pytest.approx(-1.2)
    assert single_token_loss(5.0, -1.0, dual_clip_loss=True, dual_clip_c=3.0, **kw)[0] == pytest.approx(3.0)
    assert single_token_loss(5.0, -1.0, dual_clip_loss=False, **kw)[0] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="dual_clip_c"):
        single_token_loss(1.0, -1.0, dual_clip_loss=True, dual_clip_c=1.0)


# --- case 12: log-ratio clamp --------------------------------------------------------------------------------
def test_log_ratio_clamp_caps_ratio_and_cuts_gradient():
    old = torch.zeros(1, 3, dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv = torch.tensor([-1.0], dtype=F64)
    loss, grad, metrics = loss_and_grad(old + 12.0, old, adv, mask, pg_clip_low=0.2, pg_clip_high=0.2)
    assert metrics["ratio_max"] == pytest.approx(22026.4658, rel=1e-9)  # e^10, not e^12 = 162754.8
    assert loss.item() == pytest.approx(22026.4658, rel=1e-9)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("mode", ["seq", "token"])
def test_extreme_log_ratios_stay_finite(mode):
    old = torch.zeros(2, 3)
    lp = torch.tensor([[1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]])
    loss, grad, metrics = loss_and_grad(lp, old, torch.tensor([-1.0, 1.0]), torch.ones(2, 3), importance_sampling=mode)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


# --- case 18: k3 KL ----------------------------------------------------------------------------------------
def test_k3_value():
    k3 = kl_k3(torch.tensor(-1.0, dtype=F64), torch.tensor(-1.5, dtype=F64))
    assert k3.item() == pytest.approx(0.106531, abs=1e-6)
    assert kl_k3(torch.tensor(0.0), torch.tensor(100.0)).item() == 10.0  # clamped like ROLL, no inf


def test_k3_gradient_stays_finite_for_extreme_gaps():
    lp = torch.tensor([[-100.0, -1.0]], requires_grad=True)  # float32: exp(99) would overflow
    ref = torch.tensor([[-1.0, -1.0]])
    kw = dict(ref_logprobs=ref, use_kl_loss=True, kl_loss_coef=1.0)
    loss, _ = policy_loss(lp, lp.detach(), torch.ones(1), torch.ones(1, 2), **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


def test_kl_loss_added_with_same_aggregation():
    old, mask, adv = fixture()
    ref = old - 0.5
    kw = dict(pg_clip_low=0.2, pg_clip_high=0.2)
    base, _, _ = loss_and_grad(old, old, adv, mask, **kw)
    loss, _, metrics = loss_and_grad(old, old, adv, mask, ref_logprobs=ref, use_kl_loss=True, kl_loss_coef=0.1, **kw)
    k3 = math.exp(-0.5) + 0.5 - 1  # every token, so every mode's mean is k3
    assert metrics["kl_loss"] == pytest.approx(k3)
    assert loss.item() == pytest.approx(base.item() + 0.1 * k3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(old, old, adv, mask, use_kl_loss=True)


# --- case 19: metric definitions --------------------------------------------------------------------------
def test_clipfrac_token_and_sequence_fractions():
    old = torch.zeros(2, 4, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    lp = old.clone()
    lp[1] += 0.5  # only seq 1 leaves the clip band (with A > 0: clip active)
    _, _, metrics = loss_and_grad(lp, old, torch.tensor([1.0, 1.0], dtype=F64), mask, pg_clip_low=0.2, pg_clip_high=0.2)
    assert metrics["clipfrac"] == pytest.approx(4 / 7)
    assert metrics["clipfrac_seq"] == pytest.approx(1 / 2)
    assert metrics["tokens"] == 7 and metrics["seqs"] == 2
    # out of band but A < 0: the min picks the unclipped term, so no active clip
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    _, _, metrics = loss_and_grad(lp, old, adv, mask, pg_clip_low=0.2, pg_clip_high=0.2)
    assert metrics["clipfrac"] == 0.0


def test_is_weight_scales_loss_and_is_reported():
    old, mask, adv = fixture()
    w = torch.tensor([0.5, 2.0], dtype=F64)
    base, g0, _ = loss_and_grad(old, old, adv, mask)
    loss, g1, metrics = loss_and_grad(old, old, adv, mask, is_weight=w)
    assert loss.item() == pytest.approx((-1.5 * 0.5 + 0.5 * 2.0) / 2)
    torch.testing.assert_close(g1, g0 * w[:, None])
    assert metrics["is_weight_mean"] == 1.25 and metrics["is_weight_max"] == 2.0


# --- case 20: off-policy sanity ------------------------------------------------------------------------------
def test_ratio_is_one_on_policy_and_moves_after_a_step():
    torch.manual_seed(0)
    # a linear policy shared by all positions: 8 sequences, 5 tokens, 4 features, vocab 11
    features = torch.randn(8, 5, 4)
    weight = torch.randn(4, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (8, 5))
    mask = torch.ones(8, 5, dtype=torch.bool)
    adv = torch.randn(8)

    def logprobs():
        return (features @ weight).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)

    old = logprobs().detach()
    opt = torch.optim.SGD([weight], lr=1.0)
    batches = [slice(0, 4), slice(4, 8)]
    kw = dict(pg_clip_low=3e-4, pg_clip_high=4e-4)
    loss, metrics = policy_loss(logprobs()[batches[0]], old[batches[0]], adv[batches[0]], mask[batches[0]], **kw)
    assert metrics["ratio_mean"] == 1.0 and metrics["ratio_max"] == 1.0 and metrics["clipfrac"] == 0.0
    opt.zero_grad()
    loss.backward()
    opt.step()
    _, metrics = policy_loss(logprobs()[batches[1]], old[batches[1]], adv[batches[1]], mask[batches[1]], **kw)
    assert metrics["ratio_max"] != 1.0 and metrics["approx_kl"] > 0


# --- finite-difference gradient checks ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["seq", "token"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradcheck(mode, agg):
    torch.manual_seed(1)
    old = torch.randn(3, 5, dtype=F64) - 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    lp = (old + 0.05 * torch.randn(3, 5, dtype=F64)).requires_grad_()
    lp.data[2, 0] = old[2, 0] + 1.0  # one sequence well outside the clip band (flat region)
    adv = torch.tensor([1.0, -0.7, -2.0], dtype=F64)  # constant per sequence: where GSPO-token is a true gradient
    ref = old - 0.3

    def f(x):
        return policy_loss(
            x, old, adv, mask, importance_sampling=mode, pg_clip_low=0.2, pg_clip_high=0.25,
            dual_clip_loss=True, dual_clip_c=2.0, loss_agg_mode=agg, norm_length=5,
            is_weight=torch.tensor([0.9, 1.1, 1.0], dtype=F64), ref_logprobs=ref, use_kl_loss=True, kl_loss_coef=0.05,
        )[0]

    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-8)


# --- properties ------------------------------------------------------------------------------------------------
def batch(draw, b, t, dtype=F64):
    """Random logprobs-like [b, t] float64 values."""
    values = draw(st.lists(st.floats(-3, 0, allow_nan=False), min_size=b * t, max_size=b * t))
    return torch.tensor(values, dtype=dtype).reshape(b, t)


@st.composite
def problems(draw, max_b=4, max_t=6):
    b, t = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    old = batch(draw, b, t)
    delta = torch.tensor(draw(st.lists(st.floats(-0.3, 0.3), min_size=b * t, max_size=b * t)), dtype=F64).reshape(b, t)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).reshape(b, t)
    adv = torch.tensor(draw(st.lists(st.floats(-2, 2), min_size=b, max_size=b)), dtype=F64)
    return old + delta, old, adv, mask


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), shift=st.floats(-2, 2), pad=st.integers(0, 5))
def test_gspo_ratio_is_length_invariant(n, shift, pad):
    old = torch.linspace(-3, -0.1, n + pad, dtype=F64)[None]
    mask = torch.arange(n + pad)[None] < n
    _, _, metrics = loss_and_grad(old + shift, old, torch.ones(1, dtype=F64), mask)
    assert metrics["ratio_mean"] == pytest.approx(math.exp(shift), rel=1e-12)  # product form: e^(n*shift)


GARBAGE = st.sampled_from([NAN, INF, -INF, 1e30, -1e30, 0.0])


@settings(max_examples=40, deadline=None)
@given(p=problems(), mode=st.sampled_from(["seq", "token"]), agg=st.sampled_from(list(AGG_EXPECTED)), data=st.data())
def test_mask_invariance(p, mode, agg, data):
    lp, old, adv, mask = p
    ref = old - 0.2
    adv_tok = adv[:, None].expand_as(lp).clone()

    def dirty(x):
        x = x.clone()
        for idx in (~mask).nonzero().tolist():
            x[tuple(idx)] = data.draw(GARBAGE)
        return x

    kw = dict(importance_sampling=mode, loss_agg_mode=agg, norm_length=6, ref_logprobs=ref, use_kl_loss=True,
              kl_loss_coef=0.1, dual_clip_loss=True, pg_clip_low=0.1, pg_clip_high=0.1)
    clean = loss_and_grad(lp, old, adv_tok, mask, **kw)
    kw["ref_logprobs"] = dirty(ref)
    noisy = loss_and_grad(dirty(lp), dirty(old), dirty(adv_tok), mask, **kw)
    assert torch.equal(clean[0], noisy[0])
    assert torch.equal(clean[1], noisy[1])
    assert clean[2] == noisy[2]


@settings(max_examples=40, deadline=None)
@given(p=problems(), per_token=st.booleans())
def test_on_policy_gspo_equals_grpo(p, per_token):
    _, old, adv, mask = p
    if per_token:
        adv = adv[:, None] * torch.linspace(-1, 1, old.shape[1], dtype=F64)
    _, g_seq, _ = loss_and_grad(old, old, adv, mask, importance_sampling="seq")
    _, g_tok, _ = loss_and_grad(old, old, adv, mask, importance_sampling="token")
    torch.testing.assert_close(g_seq, g_tok, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(p=problems(), clip=st.sampled_from([(3e-4, 4e-4), (0.2, 0.27), (0.05, 0.05)]))
def test_gspo_token_equals_paper_gspo_for_constant_advantages(p, clip):
    lp, old, adv, mask = p
    loss, grad, _ = loss_and_grad(lp, old, adv, mask, pg_clip_low=clip[0], pg_clip_high=clip[1])
    x = lp.clone().requires_grad_()
    if not mask.any():
        return
    ref = paper_gspo_loss(x, old, adv, mask, *clip)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, x.grad, atol=1e-12, rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    p=problems(max_b=6), mode=st.sampled_from(["seq", "token"]), agg=st.sampled_from(list(AGG_EXPECTED)), data=st.data()
)
def test_micro_batches_with_global_denominators_sum_to_whole_batch(p, mode, agg, data):
    lp, old, adv, mask = p
    kw = dict(importance_sampling=mode, loss_agg_mode=agg, norm_length=6, pg_clip_low=0.1, pg_clip_high=0.1,
              ref_logprobs=old - 0.1, use_kl_loss=True, kl_loss_coef=0.2)
    whole_loss, whole_grad, _ = loss_and_grad(lp, old, adv, mask, **kw)

    b = lp.shape[0]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, b - 1)), max_size=3)))) if b > 1 else []
    bounds = [0, *cuts, b]
    totals = dict(num_tokens=float(mask.sum()), num_seqs=float(mask.any(-1).sum()))
    x = lp.clone().requires_grad_()
    acc = torch.zeros((), dtype=F64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = slice(lo, hi)
        kw_part = {**kw, "ref_logprobs": kw["ref_logprobs"][part]}
        loss, _ = policy_loss(x[part], old[part], adv[part], mask[part], **kw_part, **totals)
        loss.backward()
        acc += loss.detach()
    torch.testing.assert_close(acc, whole_loss, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x.grad, whole_grad, atol=1e-12, rtol=1e-12)


def test_bad_inputs_are_named():
    old, mask, adv = fixture()
    with pytest.raises(ValueError, match="importance_sampling"):
        policy_loss(old, old, adv, mask, importance_sampling="sequence")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(old, old, adv[:1], mask)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss(old, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="is_weight"):
        policy_loss(old, old, adv, mask, is_weight=torch.ones(3))
