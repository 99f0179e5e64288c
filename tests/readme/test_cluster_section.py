"""The README's "Running on a cluster" commands, run as written on one CPU machine.

The commands are read from the section's code block, so a drift between README and code fails here. They run with
the GPU and network parts replaced by CPU and loopback equivalents, and nothing else changed: the key directory is a
temporary one, the learner node's address 10.0.0.5 is 127.0.0.1 (the learner still binds 0.0.0.0 with CURVE keys,
as on a cluster), the GPU config is the quickstart config with the session's tiny model and free ports,
`actor.device=cuda` is `cpu`, and CUDA_VISIBLE_DEVICES is dropped. Then: the keys are written, the learner trains
with the CURVE-authenticated actor, and `gspo-async status` with the client key lists that actor.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, free_port, read_jsonl, stop_processes, wait_for

pytestmark = pytest.mark.slow

LEARNER_HOST = "10.0.0.5"  # the README's learner node
BASE_PORT = "5555"  # the default learner.port the README's addresses use


def cluster_commands() -> dict[str, list[str]]:
    """The section's `gspo-async` commands by subcommand, as argv after `gspo-async` (VAR=value prefixes kept
    apart under the key "<command>/env")."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Running on a cluster\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Running on a cluster' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the cluster section has no bash code block"
    out: dict[str, list[str]] = {}
    for line in block.group(1).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        env = []
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            env.append(words.pop(0))
        if not words:
            continue
        assert words[0] == "gspo-async", f"the cluster section runs {words[0]!r}, which this test does not know"
        assert words[1] not in out, f"two `gspo-async {words[1]}` commands: extend this test"
        out[words[1]] = words[1:]
        out[f"{words[1]}/env"] = env
    return out


def on_this_machine(argv: list[str], keys: str, port: int) -> list[str]:
    """The CPU, loopback equivalent of one README command (see the module docstring)."""
    out = []
    for word in argv:
        word = word.replace("keys/", f"{keys}/").replace(f"{LEARNER_HOST}:{BASE_PORT}", f"127.0.0.1:{port}")
        word = word.replace(f"={LEARNER_HOST}", "=127.0.0.1")
        if word == "actor.device=cuda":
            word = "actor.device=cpu"
        out.append(word)
    return out


def test_the_cluster_sections_commands_run_as_written(tmp_path, tiny_model_dir):
    commands = cluster_commands()
    assert {c for c in commands if "/" not in c} == {"keys", "learner", "actor", "status"}
    assert commands["actor/env"] == ["CUDA_VISIBLE_DEVICES=3"] and commands["learner/env"] == []
    keys, port, run_dir = tmp_path / "keys", free_port(), tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CUDA_")},
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def gspo(argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gspo_async", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, **kw)

    made = gspo(on_this_machine(commands["keys"], str(keys), port))
    assert made.returncode == 0, made.stderr
    assert (keys / "server.key_secret").is_file() and (keys / "authorized_clients" / "client0.key").is_file()

    learner_argv = on_this_machine(commands["learner"], str(keys), port)
    gpu_config = learner_argv[1]
    assert gpu_config.startswith("configs/gpu_") and (ROOT / gpu_config).is_file(), gpu_config
    learner_argv[1] = "configs/quickstart.yaml"  # the tiny model on CPU instead of the GPU config's model
    learner_argv += [f"model.path={tiny_model_dir}", "model.build_tiny_if_missing=false", f"run_dir={run_dir}",
                     f"learner.port={port}", f"learner.weight_store_port={free_port()}", "learner.eval_every=0",
                     "learner.total_steps=1000000", "telemetry.dashboard_port=null", "learner.checkpoint.every=0"]
    assert "learner.host=0.0.0.0" in learner_argv and "learner.advertise_host=127.0.0.1" in learner_argv
    actor_argv = on_this_machine(commands["actor"], str(keys), port)
    assert "actor.device=cpu" in actor_argv and f"127.0.0.1:{port}" in actor_argv
    procs = []
    try:
        for name, argv in (("learner", learner_argv), ("actor", actor_argv)):
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "gspo_async", *argv], cwd=ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))

        def logs() -> str:
            return "\n".join(f"== {n}\n" + (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:]
                             for n in ("learner", "actor"))

        def steps() -> int:
            return max((int(r.get("step", 0)) for r in read_jsonl(run_dir / "metrics.jsonl")), default=0)

        try:
            wait_for(lambda: steps() >= 2, 300, "two steps trained with the CURVE-authenticated actor", tuple(procs))
        except AssertionError as err:
            raise AssertionError(f"{err}\n{logs()}") from None
        status = gspo(on_this_machine(commands["status"], str(keys), port))
        assert status.returncode == 0, status.stderr + logs()
        assert re.search(r"^actors: 1 live", status.stdout, re.M), status.stdout  # the actor, seen through CURVE
    finally:
        stop_processes(procs, timeout_s=60)
