"""The shell launchers: valid bash, they print the command they start, and everything they pass is accepted by the
real CLI, config schema and actor (run against stub programs, see conftest.py)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch.distributed.run as torchrun

from gspo_async.config import load_config
from tests.launch.conftest import LAUNCH, ROOT, check_actor, check_learner, parse_cli

pytestmark = pytest.mark.slow  # every test runs a launch script (bash) as a process

SCRIPTS = sorted(p for p in LAUNCH.rglob("*") if p.suffix in (".sh", ".sbatch"))


def printed(stderr: str, script: str) -> list[str]:
    """The command a launcher says it starts ("[launch/x.sh] cmd args"), split into words."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"[launch/{script}] ")]
    assert len(lines) == 1, stderr
    return lines[0].split()[1:]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_every_script_is_valid_bash(script: Path):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


def test_learner_sh_prints_and_starts_a_valid_learner_command(stubs, keys_dir):
    env = {"GSPO_HOST": "0.0.0.0", "GSPO_PORT": "6100", "GSPO_RUN_DIR": "/tmp/run-x", "GSPO_RESUME": "1"}
    proc = stubs.run("learner.sh", "configs/gpu_qwen2.5-1.5b.yaml",
                     f"learner.curve.secret_key={keys_dir}/server.key_secret", env=env)
    [call] = stubs.calls("gspo-async")
    assert printed(proc.stderr, "learner.sh") == ["gspo-async", *call["argv"]]
    args, cfg = check_learner(call["argv"])
    assert args.resume and args.config == "configs/gpu_qwen2.5-1.5b.yaml"
    assert (cfg.learner.host, cfg.learner.port, cfg.weight_store_port, cfg.run_dir) == ("0.0.0.0", 6100, 6101,
                                                                                          "/tmp/run-x")
    assert cfg.learner.curve.secret_key == f"{keys_dir}/server.key_secret"


def test_learner_sh_defaults_to_the_quickstart(stubs):
    stubs.run("learner.sh", env={"GSPO_INSECURE": "1"})
    [call] = stubs.calls("gspo-async")
    args, cfg = check_learner(call["argv"])
    assert args.config == "configs/quickstart.yaml" and not args.resume and cfg.learner.insecure


def test_learner_sh_starts_deepspeed_ranks_through_torchrun(stubs):
    stubs.run("learner.sh", "configs/gpu_qwen2.5-7b.yaml",
              env={"GSPO_LAUNCHER": "torchrun --standalone --nproc_per_node=4", "GSPO_RESUME": "1"})
    [call] = stubs.calls("torchrun")
    launch = torchrun.get_args_parser().parse_args(call["argv"])
    assert launch.module and launch.training_script == "gspo_async" and launch.nproc_per_node == "4"
    args, cfg = check_learner(launch.training_script_args)
    assert args.resume and cfg.learner.engine == "deepspeed"


def test_learner_sh_covers_the_cluster_sections_settings(stubs, keys_dir):
    env = {"GSPO_HOST": "0.0.0.0", "GSPO_ADVERTISE_HOST": "10.0.0.5",
           "GSPO_SERVER_KEY": f"{keys_dir}/server.key_secret", "GSPO_AUTHORIZED_CLIENTS": f"{keys_dir}/authorized_clients", "GSPO_RESUME": "auto"}
    stubs.run("learner.sh", "configs/gpu_qwen2.5-1.5b.yaml", "learner.port=6200", env=env)
    [call] = stubs.calls("gspo-async")
    args, cfg = check_learner(call["argv"])
    assert args.resume and args.start_if_missing
    assert (cfg.learner.host, cfg.learner.advertise_host, cfg.learner.port) == ("0.0.0.0", "10.0.0.5", 6200)
    assert cfg.learner.curve.secret_key == f"{keys_dir}/server.key_secret"
    assert cfg.learner.curve.authorized_clients == f"{keys_dir}/authorized_clients"


def test_learner_sh_refuses_an_unknown_resume_value(stubs):
    proc = stubs.run("learner.sh", env={"GSPO_RESUME": "yes"}, check=False)
    assert proc.returncode == 2 and "GSPO_RESUME must be 1, auto or 0" in proc.stderr
    assert stubs.calls() == []


def test_learner_sh_with_a_launcher_shards_one_learner_with_deepspeed(stubs):
    """The README's multi-GPU line on a config whose engine is torch: the ranks must not each start a learner."""
    assert load_config(ROOT / "configs/gpu_qwen2.5-1.5b.yaml").learner.engine == "torch"
    stubs.run("learner.sh", "configs/gpu_qwen2.5-1.5b.yaml", env={"GSPO_LAUNCHER": "torchrun --nproc_per_node=2"})
    [call] = stubs.calls("torchrun")
    launch = torchrun.get_args_parser().parse_args(call["argv"])
    _, cfg = check_learner(launch.training_script_args)
    assert cfg.learner.engine == "deepspeed"


def test_learner_sh_keeps_deepspeed_from_adding_local_rank(stubs):
    runner = pytest.importorskip("deepspeed.launcher.runner")
    stubs.run("learner.sh", "configs/gpu_qwen2.5-7b.yaml", "learner.port=7000",
              env={"GSPO_LAUNCHER": "deepspeed --num_gpus 8"})
    [call] = stubs.calls("deepspeed")
    launch = runner.parse_args(call["argv"])
    assert launch.no_local_rank and launch.module and launch.user_script == "gspo_async" and launch.num_gpus == 8
    _, cfg = check_learner(launch.user_args)
    assert cfg.learner.port == 7000


def test_actor_sh_prints_and_starts_a_valid_actor_command(stubs, keys_dir):
    env = {"GSPO_ACTOR_ID": "node3-gpu1", "GSPO_DEVICE": "cuda:1", "GSPO_CLIENT_KEY": f"{keys_dir}/client0.key_secret",
           "GSPO_SERVER_KEY": f"{keys_dir}/server.key"}
    proc = stubs.run("actor.sh", "10.1.2.3:6100", "actor.prompts_per_lease=16", env=env)
    [call] = stubs.calls("gspo-async")
    assert printed(proc.stderr, "actor.sh") == ["gspo-async", *call["argv"]]
    args, actor = check_actor(call["argv"])
    assert (args.learner, args.id) == ("10.1.2.3:6100", "node3-gpu1")
    assert "actor.device=cuda:1" in args.overrides and "actor.prompts_per_lease=16" in args.overrides
    assert actor.client.curve is not None  # the actor found and loaded both key files


def test_actor_sh_without_an_address_explains_itself(stubs):
    proc = stubs.run("actor.sh", check=False)
    assert proc.returncode == 2 and "usage: launch/actor.sh HOST:PORT" in proc.stderr
    assert stubs.calls() == []


def test_local_sh_passes_its_overrides(stubs):
    proc = stubs.run("local.sh", "configs/quickstart.yaml", "local.num_actors=3", "learner.total_steps=5")
    [call] = stubs.calls("gspo-async")
    assert printed(proc.stderr, "local.sh") == ["gspo-async", *call["argv"]]
    args = parse_cli(call["argv"])
    from gspo_async.config import load_config

    cfg = load_config(ROOT / args.config, args.overrides)
    assert args.command == "local" and cfg.local.num_actors == 3


def test_actors_on_node_starts_one_actor_per_visible_gpu(stubs, keys_dir):
    stubs.run("slurm/actors_on_node.sh", "10.0.0.7:5555", f"actor.curve.secret_key={keys_dir}/client0.key_secret",
              env={"CUDA_VISIBLE_DEVICES": "2,5", "SLURM_JOB_ID": "77", "SLURMD_NODENAME": "gpu-a"})
    calls = stubs.calls("gspo-async")
    assert sorted(c["env"]["CUDA_VISIBLE_DEVICES"] for c in calls) == ["2", "5"]
    ids = sorted(check_actor(c["argv"])[0].id for c in calls)
    assert ids == ["gpu-a-gpu2-77", "gpu-a-gpu5-77"]


def slurm_env(keys_dir: Path, nodes: str, gpus: int, **extra: str) -> dict:
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[0-1]", "STUB_NODES": nodes,
            "SLURM_GPUS_PER_NODE": str(gpus), "SLURM_CPUS_ON_NODE": "32", "GSPO_KEYS": str(keys_dir), **extra}


def test_train_sbatch_places_the_learner_and_one_actor_per_other_gpu(stubs, keys_dir):
    stubs.run("slurm/train.sbatch", "configs/gpu_qwen2.5-1.5b.yaml",
              env=slurm_env(keys_dir, "n0,n1", 4, STUB_ACTORS="7"))
    learners = [c for c in stubs.calls("gspo-async") if c["argv"][0] == "learner"]
    actors = [c for c in stubs.calls("gspo-async") if c["argv"][0] == "actor"]
    [learner] = learners
    _, cfg = check_learner(learner["argv"])
    assert (cfg.learner.host, cfg.learner.advertise_host, cfg.learner.port) == ("0.0.0.0", "10.0.0.7", 5555)
    assert cfg.run_dir == "runs/slurm-42" and learner["env"]["CUDA_VISIBLE_DEVICES"] == "0"  # one learner GPU
    # 3 actors on node 0 (GPUs 1-3: GPU 0 is the learner's), 4 on node 1; each its own GPU, all with valid keys
    ids = []
    for call in actors:
        args, actor = check_actor(call["argv"])
        assert args.learner == "10.0.0.7:5555" and actor.client.curve is not None
        ids.append(args.id)
    assert sorted(ids) == sorted([f"n0-gpu{i}-42" for i in (1, 2, 3)] + [f"n1-gpu{i}-42" for i in range(4)])
    assert all(len(c["env"]["CUDA_VISIBLE_DEVICES"].split(",")) == 1 for c in actors)
    gpu_requests = sorted(re.search(r"--gpus-per-node=(\d+)", " ".join(c["argv"])).group(1)
                          for c in stubs.calls("srun") if "--gpus-per-node" in " ".join(c["argv"]))
    assert gpu_requests == ["4", "4"]  # one step per node, holding the whole node


def gpu_owners(stubs) -> dict[tuple[str, str], list[str]]:
    """(node, GPU) -> the processes (learner, torchrun, actor ids) that the rendered commands bound to it."""
    owners: dict[tuple[str, str], list[str]] = {}
    for call in stubs.calls():
        if call["prog"] not in ("gspo-async", "torchrun") or "CUDA_VISIBLE_DEVICES" not in call["env"]:
            continue
        who = call["prog"] if call["prog"] == "torchrun" else call["argv"][0]
        for gpu in call["env"]["CUDA_VISIBLE_DEVICES"].split(","):
            owners.setdefault((call["env"]["SLURMD_NODENAME"], gpu), []).append(who)
    return owners


@pytest.mark.parametrize("learner_gpus", ["1", "2"])
def test_train_sbatch_never_assigns_a_gpu_twice(stubs, keys_dir, learner_gpus):
    """A 2-node allocation of 8 GPUs each: every GPU has exactly one process, the learner's on node 0; no step
    overlaps another (srun --overlap would let two steps share GPUs)."""
    stubs.run("slurm/train.sbatch", "configs/gpu_qwen2.5-7b.yaml",
              env=slurm_env(keys_dir, "n0,n1", 8, GSPO_LEARNER_GPUS=learner_gpus,
                            STUB_ACTORS=str(16 - int(learner_gpus))))
    owners = gpu_owners(stubs)
    assert sorted(owners) == sorted((n, str(g)) for n in ("n0", "n1") for g in range(8)), owners
    assert {k: v for k, v in owners.items() if len(v) != 1} == {}, "a GPU is bound twice"
    learner = "learner" if learner_gpus == "1" else "torchrun"
    assert sorted(k for k, v in owners.items() if v == [learner]) == [("n0", str(g)) for g in range(int(learner_gpus))]
    assert not any("--overlap" in c["argv"] for c in stubs.calls("srun"))


def test_train_sbatch_advertises_the_chosen_interface(stubs, keys_dir):
    stubs.run("slurm/train.sbatch", env=slurm_env(keys_dir, "n0,n1", 2, GSPO_IFACE="eth1"))
    [learner] = [c for c in stubs.calls("gspo-async") if c["argv"][0] == "learner"]
    assert check_learner(learner["argv"])[1].learner.advertise_host == "10.9.8.7"
    assert all(check_actor(c["argv"])[0].learner == "10.9.8.7:5555"
               for c in stubs.calls("gspo-async") if c["argv"][0] == "actor")
    stubs.run("slurm/train.sbatch", env=slurm_env(keys_dir, "n0,n1", 2, GSPO_ADVERTISE_HOST="10.3.3.3"))
    [learner] = [c for c in stubs.calls("gspo-async") if c["argv"][0] == "learner"]
    assert check_learner(learner["argv"])[1].learner.advertise_host == "10.3.3.3"
    proc = stubs.run("slurm/train.sbatch", env=slurm_env(keys_dir, "n0,n1", 2, GSPO_IFACE="ib9"), check=False)
    assert proc.returncode == 1 and "on interface ib9" in proc.stderr and "GSPO_ADVERTISE_HOST" in proc.stderr


def test_sbatch_output_needs_no_directory():
    for script in ("train.sbatch", "add_actors.sbatch"):
        [output] = re.findall(r"^#SBATCH --output=(\S+)$", (LAUNCH / "slurm" / script).read_text(), re.M)
        assert "/" not in output, f"{script}: sbatch cannot create the directory of {output}"


def test_train_sbatch_insecure_and_multi_gpu_learner(stubs, keys_dir):
    stubs.run("slurm/train.sbatch", "configs/gpu_qwen2.5-7b.yaml",
              env=slurm_env(keys_dir, "n0,n1", 2, GSPO_INSECURE="1", GSPO_LEARNER_GPUS="2"))
    [call] = stubs.calls("torchrun")
    launch = torchrun.get_args_parser().parse_args(call["argv"])
    assert launch.nproc_per_node == "2" and launch.module
    _, cfg = check_learner(launch.training_script_args)
    assert cfg.learner.insecure and cfg.learner.curve.secret_key is None
    actors = stubs.calls("gspo-async")
    assert len(actors) == 2  # node 0 is all learner; node 1 has two GPUs
    for c in actors:
        args, actor = check_actor(c["argv"])
        assert actor.client.curve is None and not any("curve" in o for o in args.overrides)


def test_train_sbatch_spreads_the_learner_over_nodes(stubs, keys_dir):
    """GSPO_LEARNER_NODES=2: one torchrun per learner node (--nnodes 2, its --node_rank), all meeting at the first
    node's address, so global rank 0 is there; the remaining node runs actors."""
    stubs.run("slurm/train.sbatch", "configs/gpu_qwen2.5-7b.yaml",
              env=slurm_env(keys_dir, "n0,n1,n2", 2, GSPO_INSECURE="1", GSPO_LEARNER_GPUS="2",
                            GSPO_LEARNER_NODES="2", GSPO_MASTER_PORT="29611"))
    ranks = {}
    for call in stubs.calls("torchrun"):
        launch = torchrun.get_args_parser().parse_args(call["argv"])
        assert (launch.nnodes, launch.nproc_per_node) == ("2", "2") and launch.module
        assert (launch.master_addr, launch.master_port) == ("10.0.0.7", 29611)
        _, cfg = check_learner(launch.training_script_args)
        assert cfg.learner.engine == "deepspeed" and cfg.learner.advertise_host == "10.0.0.7"
        ranks[launch.node_rank] = call["env"]["SLURMD_NODENAME"]
    assert ranks == {0: "n0", 1: "n1"}
    actors = [check_actor(c["argv"])[0].id for c in stubs.calls("gspo-async")]
    assert sorted(actors) == ["n2-gpu0-42", "n2-gpu1-42"]  # both learner nodes are all learner


def test_train_sbatch_refuses_more_learner_nodes_than_the_job_has(stubs, keys_dir):
    for nodes, words in (("3", "the job has 2 node(s)"), ("two", "must be a positive integer")):
        proc = stubs.run("slurm/train.sbatch", env=slurm_env(keys_dir, "n0,n1", 2, GSPO_LEARNER_NODES=nodes),
                         check=False)
        assert proc.returncode == 2 and words in proc.stderr
    assert stubs.calls("srun") == []


def test_add_actors_sbatch_adds_one_actor_per_gpu_of_every_node(stubs, keys_dir):
    stubs.run("slurm/add_actors.sbatch", "10.0.0.9:5555", env=slurm_env(keys_dir, "m0,m1", 2))
    calls = stubs.calls("gspo-async")
    ids = sorted(check_actor(c["argv"])[0].id for c in calls)
    assert ids == ["m0-gpu0-42", "m0-gpu1-42", "m1-gpu0-42", "m1-gpu1-42"]
    assert all(check_actor(c["argv"])[1].client.curve is not None for c in calls)
    proc = stubs.run("slurm/add_actors.sbatch", check=False)
    assert proc.returncode != 0 and "usage: sbatch launch/slurm/add_actors.sbatch HOST:PORT" in proc.stderr


def test_the_cluster_guide_commands_are_valid(keys_dir, tmp_path):
    """Every `gspo-async ...` command in the README's code blocks parses, and its overrides validate."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # leading VAR=value assignments
                words = words[1:]
            if words and words[0] == "gspo-async":
                commands.append([w.replace("keys/", f"{keys_dir}/") for w in words[1:]])
    seen = set()
    for argv in commands:
        args = parse_cli(argv)
        seen.add(args.command)
        if args.command == "learner":
            check_learner(argv)
        elif args.command == "actor":
            assert check_actor(argv)[1].client.curve is not None
    assert seen == {"keys", "learner", "actor", "status"}
