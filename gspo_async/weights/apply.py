"""What a torch module sends (`named_weights`) and how a received version is loaded (`apply_to_module`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gspo_async.weights.elastic import ReceivedWeights


def named_weights(module: torch.nn.Module, *, dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """The module's parameters (tied ones once), detached, optionally cast to `dtype` (e.g. bf16 to halve
    the bytes on the wire). No copy unless a cast is asked for."""
    return [(name, p.detach() if dtype is None else p.detach().to(dtype)) for name, p in module.named_parameters()]


def apply_to_module(module: torch.nn.Module, received: ReceivedWeights | Mapping[str, torch.Tensor], *,
                    strict: bool = True, cast: bool = False) -> int:
    """Copy a complete weight version into `module`'s parameters (and buffers named in it).

    Everything is checked before anything is written, so a mismatch leaves the module untouched.
    `strict`: every parameter must be present. `cast`: allow a dtype change (e.g. bf16 sent, fp32 held).
    Call it at a safe point (no forward pass running on the module). Returns the number of tensors copied.
    """
    tensors = received.tensors if isinstance(received, ReceivedWeights) else dict(received)
    params = dict(module.named_parameters())
    targets = {**dict(module.named_buffers()), **params}
    problems = []
    unknown = sorted(n for n in tensors if n not in targets)
    if unknown:
        problems.append(f"names the module does not have: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    if strict:
        missing = sorted(n for n in params if n not in tensors)
        if missing:
            problems.append(f"parameters not received: {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                            "(pass strict=False to load a subset)")
    for name, t in tensors.items():
        dest = targets.get(name)
        if dest is None:
            continue
        if dest.shape != t.shape:
            problems.append(f"{name}: received shape {tuple(t.shape)}, module has {tuple(dest.shape)}")
        elif dest.dtype != t.dtype and not cast:
            problems.append(f"{name}: received {t.dtype}, module has {dest.dtype} (pass cast=True to convert)")
    if problems:
        raise ValueError("received weights do not fit the module: " + "; ".join(problems))
    with torch.no_grad():
        for name, t in tensors.items():
            targets[name].copy_(t)
    return len(tensors)
