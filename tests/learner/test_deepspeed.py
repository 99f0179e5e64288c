"""DeepSpeed engine: ZeRO over two gloo ranks trains exactly like the plain torch engine, and its checkpoints resume.

The ranks run tests/learner/ds_worker.py under torchrun; the torch-engine reference runs the same function here.
Each scenario trains 3 steps of 2 mini-batches whose 8 sequences form micro-batches of 3, 3 and 2, so gradients
are accumulated and rank 1 pads its share with a zero-weighted pass.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gspo_async.config import config_from_dict
from gspo_async.learner.backends.deepspeed_backend import DeepSpeedBackend, deepspeed_config
from tests.support.ports import free_port

WORKER = Path(__file__).with_name("ds_worker.py")
# Weights: fp32 sums in another order differ by ~1e-7; a lost or double-counted micro-batch moves them by ~1e-2.
# A wrong global gradient scale leaves AdamW's clipped steps unchanged but not the reported (pre-clip) grad norm.
TOL = 1e-5


def _load_worker():
    spec = importlib.util.spec_from_file_location("ds_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def launch(tmp_path: Path, out: str, *args: str, ranks: int = 2, nodes: int = 1) -> dict:
    """Run the worker on `ranks` processes (torchrun, or plain python for 1) and return rank 0's result.

    `nodes` > 1: one torchrun per "node" (``--nnodes nodes --node_rank i``, `ranks` processes each) on this machine,
    meeting at one rendezvous address, as torchrun on several machines would."""
    ext = tmp_path / "torch_extensions"  # a fresh JIT cache: anything built lands here
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    port = free_port()
    worker_args = [str(WORKER), "--engine", "deepspeed", "--out", str(tmp_path / out), *args]
    if ranks == 1 and nodes == 1:
        cmds = [[sys.executable, *worker_args]]
    else:
        cmds = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node_rank={node}",
                 f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1", f"--master_port={port}", *worker_args]
                for node in range(nodes)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    for cmd, proc in zip(cmds, procs):
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    built = [p.name for p in ext.rglob("*")] if ext.exists() else []
    # The structural check for a g++ build (which took 54 s here, against ~1.5 s for the engine's construction):
    # its output lands in the fresh extensions directory. No stopwatch: a loaded machine is slow either way.
    assert not built, f"DeepSpeed JIT-compiled an op ({built}): the shared-memory op patch is not in effect"
    result = torch.load(tmp_path / out, weights_only=False)
    return result


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_same_training(got: dict, want: dict) -> float:
    """Same final weights, and per step the same global pre-clip gradient norm and learning rate."""
    diff = max_diff(got["weights"], want["weights"])
    assert diff < TOL
    assert len(got["metrics"]) == len(want["metrics"])
    for g, w in zip(got["metrics"], want["metrics"]):
        assert g["train/grad_norm"] == pytest.approx(w["train/grad_norm"], rel=1e-5)
        assert g["train/lr"] == pytest.approx(w["train/lr"], rel=1e-6)
    return diff


@pytest.fixture(scope="module")
def reference() -> dict:
    """The torch engine's 3 steps on the default scenario, plus how far they move the weights."""
    result = worker.run("torch")
    initial = dict(worker.tiny_model(tied=False).named_parameters())
    result["moved"] = max_diff(result["weights"], {k: v.detach() for k, v in initial.items()})
    return result


# ----- fast checks -----

def _cfg(**deepspeed):
    return config_from_dict({"learner": {"engine": "deepspeed", "deepspeed": deepspeed, "eval_every": 0},
                             "optim": {"grad_clip": 0.5}})


def test_config_merges_extra_into_zero_section():
    cfg = _cfg(zero_stage=3, extra={"zero_optimization": {"stage3_param_persistence_threshold": 0},
                                    "communication_data_type": "fp32"})
    ds = deepspeed_config(cfg, on_gpu=False)
    assert ds["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert ds["gradient_clipping"] == 0.5 and ds["gradient_accumulation_steps"] == 1
    assert ds["communication_data_type"] == "fp32"


@pytest.mark.parametrize("extra, words", [
    ({"gradient_accumulation_steps": 4}, "optim.micro_batch_size"),
    ({"optimizer": {"type": "Adam"}}, "optim.*"),
    ({"zero_optimization": {"stage": 1}}, "learner.deepspeed.zero_stage"),
    ({"bf16": {"enabled": True}}, "model.dtype"),
])
def test_config_rejects_keys_the_engine_owns(extra, words):
    with pytest.raises(ValueError, match="learner.deepspeed.extra") as err:
        deepspeed_config(_cfg(zero_stage=2, extra=extra), on_gpu=False)
    assert words in str(err.value)


def _dtype_cfg(dtype: str, **deepspeed):
    return config_from_dict({"model": {"dtype": dtype}, "learner": {"engine": "deepspeed", "deepspeed": deepspeed,
                                                                    "eval_every": 0}})


def test_precision_comes_from_model_dtype():
    assert deepspeed_config(_dtype_cfg("bfloat16"), on_gpu=True)["bf16"] == {"enabled": True}
    fp16 = deepspeed_config(_dtype_cfg("float16", extra={"fp16": {"loss_scale_window": 500}}), on_gpu=True)
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0, "loss_scale_window": 500}
    fp32 = deepspeed_config(_dtype_cfg("float32"), on_gpu=True)
    assert "bf16" not in fp32 and "fp16" not in fp32
    with pytest.raises(ValueError, match="needs learner.device: cuda"):
        deepspeed_config(_dtype_cfg("bfloat16"), on_gpu=False)


def test_pure_low_precision_is_refused_for_deepspeed():
    from gspo_async.config import ConfigError

    with pytest.raises((ValueError, ConfigError), match="DeepSpeed always keeps fp32 master weights"):
        config_from_dict({"model": {"dtype": "bfloat16"},
                          "learner": {"engine": "deepspeed", "precision": "pure", "eval_every": 0}})


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shard_gives_every_rank_the_same_number_of_passes(world_size, n):
    items = list(range(n))
    shares = []
    for rank in range(world_size):
        engine = DeepSpeedBackend.__new__(DeepSpeedBackend)  # shard() needs only rank and world size
        engine.rank, engine.world_size = rank, world_size
        shares.append((engine.shard(items), engine._real))
    passes = {len(share) for share, _ in shares}
    assert passes == {-(-n // world_size)}
    real = sorted(x for share, k in shares for x in share[:k])
    assert real == items  # every micro-batch exactly once; the rest is padding
    assert shares[0][1] == len(shares[0][0])  # rank 0 never pads


def test_partial_launcher_environment_is_a_clear_error(monkeypatch):
    from gspo_async.learner.distributed import init_learner_distributed

    for key in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun --nproc_per_node") as err:
        init_learner_distributed(_cfg())
    assert "MASTER_PORT" in str(err.value) and "LOCAL_RANK" in str(err.value)


def test_resume_refuses_another_world_size_or_stage():
    engine = DeepSpeedBackend.__new__(DeepSpeedBackend)  # load_state_dict checks before touching DeepSpeed
    engine.world_size, engine.zero_stage = 2, 2
    with pytest.raises(ValueError, match="written by 4 rank"):
        engine.load_state_dict({"scheduler": {}, "world_size": 4, "zero_stage": 2})
    with pytest.raises(ValueError, match="ZeRO-3"):
        engine.load_state_dict({"scheduler": {}, "world_size": 2, "zero_stage": 3})
    with pytest.raises(ValueError, match="torch engine"):
        engine.load_state_dict({"optimizer": {}, "scheduler": {}})


# ----- two ranks against the torch engine -----

@pytest.mark.slow
def test_zero2_two_ranks_match_torch_engine_and_checkpoint_resumes(tmp_path, reference):
    full = launch(tmp_path, "full.pt", "--zero", "2", "--save-after", "2", "--ckpt", str(tmp_path / "ckpt"))
    assert full["world_size"] == 2
    assert reference["moved"] > 1e-3
    assert max(m["train/grad_norm"] for m in reference["metrics"]) > 0.5  # grad_clip=0.5 was active
    diff = assert_same_training(full, reference)
    print(f"ZeRO-2 x2 vs torch: max |dw| {diff:.2e} (3 steps moved weights by {reference['moved']:.2e}); "
          f"engine init {full['init_s']:.2f}s")

    resumed = launch(tmp_path, "resumed.pt", "--zero", "2", "--resume", "--ckpt", str(tmp_path / "ckpt"))
    assert len(resumed["metrics"]) == 1  # fresh processes did step 3 only
    assert resumed["metrics"][0] == pytest.approx(full["metrics"][2], rel=1e-6)
    resume_diff = max_diff(resumed["weights"], full["weights"])
    print(f"ZeRO-2 resume after step 2 vs uninterrupted: max |dw| {resume_diff:.2e}")
    assert resume_diff < TOL


@pytest.mark.slow
def test_single_rank_without_launcher_matches_torch_engine(tmp_path, reference):
    got = launch(tmp_path, "one.pt", "--zero", "1", ranks=1)
    assert got["world_size"] == 1
    assert_same_training(got, reference)


@pytest.mark.slow
def test_zero3_matches_torch_engine_and_its_gathered_export_resumes_like_an_uninterrupted_run(tmp_path):
    """ZeRO-3 over two gloo ranks, every tensor partitioned, tied embeddings and the decoupled correction: the
    trainer's direct use of the (tied) output embedding, the pi_prox no-grad passes, the bucketed gather of
    broadcast_tensors and the gathered copy rank 0 evaluates on all train as the torch engine does; the Hugging Face
    export written after step 2 holds the whole gathered weights; and two fresh processes that start from that
    export plus the DeepSpeed partitions and train step 3 end where the uninterrupted 3-step run ended."""
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "ckpt"
    z3 = ("--zero", "3", "--persist-threshold", "0", "--tied", "--correction", "decoupled")
    want = worker.run("torch", tied=True, correction="decoupled", eval_check=True, save_after=2,
                      ckpt=tmp_path / "torch")
    full = launch(tmp_path, "full.pt", *z3, "--eval-check", "--save-after", "2", "--ckpt", str(ckpt))
    diff = assert_same_training(full, want)
    assert float((full["eval_logits"] - want["eval_logits"]).abs().max()) < 1e-4
    assert max_diff(full["at_save"], want["at_save"]) < TOL  # the weights after step 2, as the torch engine's
    exported = dict(AutoModelForCausalLM.from_pretrained(ckpt / "model").named_parameters())
    assert set(exported) == set(full["at_save"])
    export_diff = max_diff({k: v.detach() for k, v in exported.items()}, full["at_save"])
    assert export_diff == 0.0  # the export is the gathered weights themselves

    resumed = launch(tmp_path, "resumed.pt", *z3, "--resume", "--ckpt", str(ckpt))
    assert len(resumed["metrics"]) == 1
    assert resumed["metrics"][0] == pytest.approx(full["metrics"][2], rel=1e-6)
    resume_diff = max_diff(resumed["weights"], full["weights"])
    print(f"ZeRO-3 x2 (tied, decoupled) vs torch: max |dw| {diff:.2e}; export vs gathered weights {export_diff:.1e}; "
          f"resume after step 2 vs uninterrupted: max |dw| {resume_diff:.2e}")
    assert resume_diff < TOL


@pytest.mark.slow
def test_two_nodes_train_like_the_torch_engine(tmp_path, reference):
    """Two "nodes" (one torchrun each, --nnodes 2, one process per node) on one machine over gloo: global rank 0
    drives, the other node's rank follows; same training as the plain torch engine."""
    got = launch(tmp_path, "nodes.pt", "--zero", "2", ranks=1, nodes=2)
    assert got["world_size"] == 2
    diff = assert_same_training(got, reference)
    print(f"ZeRO-2 on 2 nodes x 1 rank vs torch: max |dw| {diff:.2e}")
