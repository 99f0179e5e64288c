"""Soft overlong penalty and truncation mask against hand-computed values."""

import pytest
import torch

from gspo_async.algo import mask_truncated, soft_overlong_penalty


def test_soft_overlong_penalty_by_hand():
    # L_max = 10, L_buf = 4: the ramp starts after 6 tokens; R_len = (6 - |y|) / 4 on (6, 10], -1 beyond 10
    lengths = torch.tensor([0, 6, 7, 8, 10, 12])
    expect = torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert torch.equal(soft_overlong_penalty(lengths, 10, 4), expect)
    assert torch.allclose(soft_overlong_penalty(lengths, 10, 4, penalty_factor=0.5), 0.5 * expect)
    # the whole budget as buffer: the ramp runs from 0 tokens
    assert torch.allclose(soft_overlong_penalty(torch.tensor([0, 5, 10]), 10, 10), torch.tensor([0.0, -0.5, -1.0]))


@pytest.mark.parametrize("buffer_length,factor", [(0, 1.0), (11, 1.0), (4, -0.1)])
def test_soft_overlong_penalty_rejects_bad_settings(buffer_length, factor):
    with pytest.raises(ValueError):
        soft_overlong_penalty(torch.tensor([3]), 10, buffer_length, factor)


def test_mask_truncated_clears_whole_rows():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out = mask_truncated(mask, torch.tensor([False, True, False]))
    assert out.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    with pytest.raises(ValueError):
        mask_truncated(mask, torch.tensor([True, False]))
