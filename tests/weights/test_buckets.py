import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gspo_async.weights.buckets import (Bucket, flatten_bucket, named_items, plan_buckets, plan_from_json,
                                        plan_to_json, state_checksum, unflatten_bucket)


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "emb": torch.randn(10, 4, generator=g),                        # 40 fp32 = 160 B
        "ln": torch.randn(4, generator=g).to(torch.bfloat16),          # 4 bf16 = 8 B
        "w": torch.randn(6, 5, generator=g),                           # 30 fp32 = 120 B
        "steps": torch.arange(3),                                      # 3 int64 = 24 B
        "scale": torch.tensor(2.5),                                    # 0-dim fp32 = 4 B
        "empty": torch.zeros(0, 7),                                    # 0 fp32
        "mask": torch.tensor([True, False, True]),                     # 3 bool = 3 B
        "b": torch.randn(8, generator=g).to(torch.bfloat16),           # 8 bf16 = 16 B
    }


def round_trip(tensors: dict[str, torch.Tensor], bucket_bytes: int) -> dict[str, torch.Tensor]:
    out = {}
    for bucket in plan_buckets(tensors, bucket_bytes):
        flat = flatten_bucket(bucket, tensors).clone()  # clone: the result must not alias the sources
        out.update(unflatten_bucket(bucket, flat))
    return out


def test_plan_by_hand():
    plan = plan_buckets(mixed_tensors(), bucket_bytes=200)
    # fp32 in input order: emb 160 B; w would make 280 > 200 -> new bucket; scale (4 B) and empty fit after w.
    assert [(b.dtype, b.names, b.offsets, b.numel) for b in plan] == [
        (torch.float32, ("emb",), (0,), 40),
        (torch.float32, ("w", "scale", "empty"), (0, 30, 31), 31),
        (torch.bfloat16, ("ln", "b"), (0, 4), 12),
        (torch.int64, ("steps",), (0,), 3),
        (torch.bool, ("mask",), (0,), 3),
    ]
    assert plan[1].shapes == ((6, 5), (), (0, 7))
    assert [b.nbytes for b in plan] == [160, 124, 24, 24, 3]


def test_tensor_exactly_bucket_sized_and_oversized():
    t = {"a": torch.zeros(25), "b": torch.zeros(25), "c": torch.zeros(60), "d": torch.zeros(1)}
    plan = plan_buckets(t, bucket_bytes=100)  # 25 fp32 = 100 B exactly
    assert [b.names for b in plan] == [("a",), ("b",), ("c",), ("d",)]  # c (240 B) alone, never split
    assert [b.names for b in plan_buckets(t, bucket_bytes=200)] == [("a", "b"), ("c",), ("d",)]
    assert [b.names for b in plan_buckets(t, bucket_bytes=1)] == [("a",), ("b",), ("c",), ("d",)]
    assert [b.names for b in plan_buckets(t, bucket_bytes=10**12)] == [("a", "b", "c", "d")]


@pytest.mark.parametrize("bucket_bytes", [1, 7, 64, 200, 10**9])
def test_round_trip_is_bitwise(bucket_bytes):
    tensors = mixed_tensors()
    tensors["nan"] = torch.tensor([float("nan"), -0.0, float("inf")])
    back = round_trip(tensors, bucket_bytes)
    assert list(back) != [] and set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    assert state_checksum(back) == state_checksum(tensors)


def test_non_contiguous_sources_and_reused_buffer():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {"t": base.t(), "s": base[:, ::2]}
    (bucket,) = plan_buckets(tensors, 10**6)
    out = torch.full((100,), -1.0)
    flat = flatten_bucket(bucket, tensors, out=out)
    assert flat.data_ptr() == out.data_ptr() and flat.numel() == 24 + 12
    views = dict(unflatten_bucket(bucket, flat))
    assert torch.equal(views["t"], base.t()) and torch.equal(views["s"], base[:, ::2])
    assert torch.equal(out[36:], torch.full((64,), -1.0))  # nothing written past the bucket


def test_plan_is_deterministic_and_survives_json():
    tensors = mixed_tensors()
    plan = plan_buckets(tensors, 64)
    assert plan == plan_buckets(list(tensors.items()), 64)
    assert plan_from_json(plan_to_json(plan)) == plan
    # the receiver's plan, rebuilt from shapes and dtypes only, is the sender's plan
    meta = {n: torch.empty(t.shape, dtype=t.dtype) for n, t in tensors.items()}
    assert plan_buckets(meta, 64) == plan


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets({"a": torch.zeros(1)}, 0)
    with pytest.raises(ValueError, match="appears twice"):
        plan_buckets([("a", torch.zeros(1)), ("a", torch.zeros(2))], 10)
    with pytest.raises(TypeError, match="pairs"):
        plan_buckets([torch.zeros(1)], 10)
    (bucket,) = plan_buckets({"a": torch.zeros(3)}, 100)
    with pytest.raises(ValueError, match="re-plan"):
        flatten_bucket(bucket, {"a": torch.zeros(4)})
    with pytest.raises(ValueError, match="1-D"):
        unflatten_bucket(bucket, torch.zeros(4))
    with pytest.raises(ValueError, match="unknown dtype"):
        plan_from_json([{"dtype": "float99", "names": [], "shapes": [], "offsets": [], "numel": 0}])


def test_checksum_detects_any_change():
    tensors = mixed_tensors()
    reference = state_checksum(tensors)
    assert state_checksum(dict(reversed(list(tensors.items())))) == reference  # order does not matter
    flipped = dict(tensors)
    raw = tensors["w"].clone()
    raw.view(torch.int32)[2, 3] ^= 1  # lowest mantissa bit of one element
    flipped["w"] = raw
    assert state_checksum(flipped) != reference
    assert state_checksum({"z": torch.tensor([0.0])}) != state_checksum({"z": torch.tensor([-0.0])})
    same_bytes = {"z": torch.zeros(2, dtype=torch.int32)}
    assert state_checksum(same_bytes) != state_checksum({"z": torch.zeros(2, dtype=torch.float32)})
    assert state_checksum({"z": torch.zeros(2, 3)}) != state_checksum({"z": torch.zeros(3, 2)})
    assert state_checksum({"a": torch.zeros(1)}) != state_checksum({"b": torch.zeros(1)})


def test_named_items_accepts_dicts_and_pairs():
    t = torch.zeros(2)
    assert named_items({"a": t}) == [("a", t)] and named_items([("a", t)]) == [("a", t)]
    assert isinstance(plan_buckets({}, 10), list) and plan_buckets({}, 10) == []
    assert Bucket(("a",), ((2,),), torch.float16, (0,), 2).nbytes == 4


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool]


@settings(max_examples=40, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3)), max_size=8),
       bucket_bytes=st.integers(1, 400))
def test_round_trip_property(specs, bucket_bytes):
    g = torch.Generator().manual_seed(len(specs))
    tensors = {}
    for i, (dtype, shape) in enumerate(specs):
        raw = torch.randint(0, 256, (torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size(),),
                            dtype=torch.uint8, generator=g)
        tensors[f"t{i}"] = raw.view(dtype).reshape(shape) if dtype != torch.bool else (raw % 2).bool().reshape(shape)
    plan = plan_buckets(tensors, bucket_bytes)
    assert sorted(n for b in plan for n in b.names) == sorted(tensors)
    for b in plan:
        assert b.nbytes <= bucket_bytes or len(b.names) == 1
        assert all(tensors[n].dtype == b.dtype for n in b.names)
    assert state_checksum(round_trip(tensors, bucket_bytes)) == state_checksum(tensors)
