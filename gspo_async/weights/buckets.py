"""Bucket plans: pack many named tensors into a few flat 1-D buffers, one dtype per buffer.

Broadcasting a handful of large flat buffers is much faster than one collective per tensor (fewer
round trips, no per-call overhead). The plan depends only on names, shapes, dtypes, their order and
`bucket_bytes`, so the sender and the receiver build the same plan; the receiver gets it from the
sync record (`plan_to_json` / `plan_from_json`) and never needs the model in advance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class Bucket:
    """One flat buffer: tensors of a single dtype laid out back to back.

    `offsets[i]` is the element (not byte) offset of tensor `names[i]` in the flat buffer,
    `numel` the buffer's length in elements.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype
    offsets: tuple[int, ...]
    numel: int

    @property
    def nbytes(self) -> int:
        """Size of the flat buffer in bytes."""
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def named_items(named_tensors: NamedTensors) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a dict or an iterable of pairs, checked: unique names, dense tensors."""
    items = list(named_tensors.items()) if isinstance(named_tensors, Mapping) else list(named_tensors)
    seen: set[str] = set()
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"expected (name, tensor) pairs or a dict of tensors, got an item {type(item).__name__}")
        name, tensor = item
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"expected (str, Tensor) pairs, got ({type(name).__name__}, {type(tensor).__name__})")
        if name in seen:
            raise ValueError(f"tensor name {name!r} appears twice; names must be unique (deduplicate tied weights)")
        if tensor.is_sparse:
            raise TypeError(f"tensor {name!r} is sparse; only dense tensors can be bucketed")
        seen.add(name)
    return items


def plan_buckets(named_tensors: NamedTensors, bucket_bytes: int) -> list[Bucket]:
    """Group tensors by dtype (dtypes in order of first appearance, tensors in input order) and cut
    each group into buckets of at most `bucket_bytes` bytes; a tensor larger than that gets a bucket
    of its own. Tensors are never split. Devices are not part of the plan: `flatten_bucket` copies
    into a buffer on whichever device the transport needs, so both sides plan identically.
    """
    if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be a positive int (bytes), got {bucket_bytes!r}")
    groups: dict[torch.dtype, list[tuple[str, tuple[int, ...], int]]] = {}
    for name, tensor in named_items(named_tensors):
        groups.setdefault(tensor.dtype, []).append((name, tuple(tensor.shape), tensor.numel()))
    return _cut(groups, bucket_bytes)


def _cut(groups: dict[torch.dtype, list[tuple[str, tuple[int, ...], int]]], bucket_bytes: int) -> list[Bucket]:
    buckets: list[Bucket] = []
    for dtype, entries in groups.items():
        itemsize = _itemsize(dtype)
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        offsets: list[int] = []
        numel = 0
        for name, shape, n in entries:
            if names and (numel + n) * itemsize > bucket_bytes:
                buckets.append(Bucket(tuple(names), tuple(shapes), dtype, tuple(offsets), numel))
                names, shapes, offsets, numel = [], [], [], 0
            names.append(name)
            shapes.append(shape)
            offsets.append(numel)
            numel += n
        if names:
            buckets.append(Bucket(tuple(names), tuple(shapes), dtype, tuple(offsets), numel))
    return buckets


def flatten_bucket(bucket: Bucket, tensors: Mapping[str, torch.Tensor], out: torch.Tensor | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Copy the bucket's tensors into one 1-D buffer of `bucket.numel` elements of `bucket.dtype`.

    `out` (1-D, at least `bucket.numel` long, right dtype) is reused when given, else a buffer is
    allocated on `device`. Sources may live on any device and be non-contiguous.
    """
    if out is None:
        out = torch.empty(bucket.numel, dtype=bucket.dtype, device=device)
    elif out.dim() != 1 or out.dtype != bucket.dtype or out.numel() < bucket.numel:
        raise ValueError(f"out must be 1-D {bucket.dtype} with >= {bucket.numel} elements, "
                         f"got {tuple(out.shape)} {out.dtype}")
    flat = out[: bucket.numel]
    with torch.no_grad():
        for name, shape, offset in zip(bucket.names, bucket.shapes, bucket.offsets):
            src = tensors[name]
            if tuple(src.shape) != shape or src.dtype != bucket.dtype:
                raise ValueError(f"tensor {name!r} is {tuple(src.shape)} {src.dtype} but the plan says "
                                 f"{shape} {bucket.dtype}; re-plan after changing the model")
            n = src.numel()
            flat[offset: offset + n].view(shape).copy_(src.detach())
    return flat


def unflatten_bucket(bucket: Bucket, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Views into `flat` (1-D, `bucket.numel` elements), one per tensor, in plan order. No copies."""
    if flat.dim() != 1 or flat.numel() != bucket.numel or flat.dtype != bucket.dtype:
        raise ValueError(f"flat must be 1-D {bucket.dtype} of {bucket.numel} elements, "
                         f"got {tuple(flat.shape)} {flat.dtype}")
    views = []
    for name, shape, offset in zip(bucket.names, bucket.shapes, bucket.offsets):
        n = 1
        for d in shape:
            n *= d
        views.append((name, flat[offset: offset + n].view(shape)))
    return views


def plan_to_json(buckets: list[Bucket]) -> list[dict]:
    """JSON-ready description of a plan (dtype as its short name, e.g. "bfloat16")."""
    return [{"dtype": str(b.dtype).removeprefix("torch."), "names": list(b.names),
             "shapes": [list(s) for s in b.shapes], "offsets": list(b.offsets), "numel": b.numel}
            for b in buckets]


def plan_from_json(data: list[dict]) -> list[Bucket]:
    """Inverse of `plan_to_json`."""
    buckets = []
    for d in data:
        dtype = getattr(torch, d["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {d['dtype']!r} in bucket plan")
        buckets.append(Bucket(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]), dtype,
                              tuple(d["offsets"]), int(d["numel"])))
    return buckets


def state_checksum(named_tensors: NamedTensors) -> str:
    """SHA-256 hex digest over names, dtypes, shapes and raw bytes, tensors sorted by name.

    Equal digests mean bitwise-equal weights (NaN payloads and -0.0 included), independent of the
    order the tensors come in and of their devices and strides.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(named_items(named_tensors), key=lambda item: item[0]):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{str(t.dtype)}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy())  # buffer protocol: no extra copy
    return h.hexdigest()
