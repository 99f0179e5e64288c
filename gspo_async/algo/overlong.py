"""Overlong responses: DAPO's soft overlong penalty and the mask that drops truncated responses from the loss.

A response cut at the length limit L_max (``response_length``, finish reason ``length``) has no final answer, so
its reward says little about its reasoning. Two remedies, usable together:

- Soft overlong penalty (DAPO, arXiv 2503.14476, Eq. 13): with buffer length L_buf and the response length |y|,

      R_len(y) =  0                                   if |y| <= L_max - L_buf
                  ((L_max - L_buf) - |y|) / L_buf     if L_max - L_buf < |y| <= L_max
                  -1                                  if |y| > L_max

  and the reward becomes r + penalty_factor * R_len(y): a linear ramp from 0 at L_max - L_buf down to
  -penalty_factor at L_max, so the policy learns to finish inside the budget before it is cut.
- Truncation mask (TRL's ``mask_truncated_completions``): truncated responses contribute no token to the loss.
  Their rewards still enter the group's mean and std, so the other responses' advantages do not change.

Pure tensor functions: lengths [B] (int), truncated [B] (bool), mask [B, T].
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_overlong_penalty(lengths: Tensor, max_length: int, buffer_length: int, penalty_factor: float = 1.0) -> Tensor:
    """penalty_factor * R_len(|y|) per response, [B] float32 (<= 0; see the module docstring for R_len).

    lengths: response lengths in tokens [B]; max_length: L_max; buffer_length: L_buf, 0 < L_buf <= L_max.
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"overlong buffer_length must be in (0, max_length={max_length}], got {buffer_length}")
    if penalty_factor < 0:
        raise ValueError(f"overlong penalty_factor must be >= 0, got {penalty_factor}")
    expected = max_length - buffer_length
    n = lengths.to(torch.float32)
    ramp = (expected - n) / buffer_length
    r_len = torch.where(n <= expected, torch.zeros_like(n), torch.where(n <= max_length, ramp, -torch.ones_like(n)))
    return penalty_factor * r_len


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """`mask` [B, T] with the rows of truncated responses (truncated [B], bool) cleared."""
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be [B] = {tuple(mask.shape[:1])}, got {tuple(truncated.shape)}")
    return mask & ~truncated.bool()[:, None]
