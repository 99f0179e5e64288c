"""Run the launch scripts against stub commands, and check what they would start with the real CLI and config.

The stubs stand in for programs that cannot run here (gspo-async itself, torchrun, deepspeed, Slurm's srun and
scontrol, hostname -I): each records its arguments as one JSON line in $STUB_LOG and exits 0. The recorded
arguments are then checked with the real parser (`gspo_async.cli.build_parser`), the real config schema
(`load_config`) and the real actor's override and key handling (`gspo_async.actor.main.Actor`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Optional

import pytest

from gspo_async.actor.main import Actor
from gspo_async.cli import build_parser
from gspo_async.config import Config, load_config
from gspo_async.protocol.auth import CurveServerKeys, generate_keys
from gspo_async.protocol.sockets import parse_address

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"

RECORD = """#!{python}
import json, os, sys, time
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "env": {{k: v for k, v in os.environ.items() if k.startswith(("GSPO_", "CUDA_", "SLURM"))}}}})
            + "\\n")
# STUB_ACTORS=N: a learner (or torchrun) runs until N actors have started, as a real one outlives its node's
# actors' start (learner_node.sh stops them when the learner ends)
expected = int(os.environ.get("STUB_ACTORS", "0"))
if expected and (os.path.basename(sys.argv[0]) == "torchrun" or sys.argv[1:2] == ["learner"]):
    deadline = time.monotonic() + 30
    while sum('"argv": ["actor"' in line for line in open(os.environ["STUB_LOG"])) < expected:
        if time.monotonic() > deadline:
            sys.exit("stub learner: fewer than " + str(expected) + " actors started within 30 s")
        time.sleep(0.05)
"""

# srun: record the call, then run the command after the options on the named node, with the GPUs a step of
# --gpus-per-node=N sees (CUDA_VISIBLE_DEVICES=0..N-1). Options are --name=value forms or known switches.
SRUN = RECORD + """
import subprocess
args = sys.argv[1:]
opts = {{}}
while args and args[0].startswith("-"):
    if "=" not in args[0] and args[0] not in ("--overlap", "--exact"):
        sys.exit("srun stub: use --option=value forms, got " + args[0])
    name, _, value = args.pop(0)[2:].partition("=")
    opts[name] = value
env = dict(os.environ, SLURMD_NODENAME=opts.get("nodelist", "node0"))
if "gpus-per-node" in opts:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(int(opts["gpus-per-node"])))
sys.exit(subprocess.call(args, env=env))
"""

SCONTROL = RECORD + """
if sys.argv[1:3] == ["show", "hostnames"]:
    print("\\n".join(os.environ["STUB_NODES"].split(",")))
"""

HOSTNAME = """#!{python}
import os, sys
print("10.0.0.7" if "-I" in sys.argv else os.environ.get("SLURMD_NODENAME", "node0"))
"""

# ip -o -4 addr show dev IFACE: eth1 has 10.9.8.7/16; any other interface does not exist
IP = """#!{python}
import sys
if sys.argv[-1] != "eth1":
    sys.exit('Device "' + sys.argv[-1] + '" does not exist.')
print("3: eth1    inet 10.9.8.7/16 brd 10.9.255.255 scope global eth1")
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


class Stubs:
    """A bin directory of stubs at the front of PATH, and the calls they recorded."""

    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.jsonl"
        for name in ("gspo-async", "torchrun", "deepspeed"):
            _write(self.bin / name, RECORD)
        _write(self.bin / "srun", SRUN)
        _write(self.bin / "scontrol", SCONTROL)
        _write(self.bin / "hostname", HOSTNAME)
        _write(self.bin / "ip", IP)

    def run(self, script: str, *args: str, env: Optional[dict] = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GSPO_", "SLURM", "CUDA_"))}
        full_env.update(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(self.log), **(env or {}))
        self.log.write_text("")
        proc = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=full_env, capture_output=True,
                              text=True, timeout=60)
        if check:
            assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def calls(self, prog: Optional[str] = None) -> list[dict]:
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if prog is None or r["prog"] == prog]


@pytest.fixture
def stubs(tmp_path) -> Stubs:
    return Stubs(tmp_path)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory) -> Path:
    """A key directory exactly as `gspo-async keys DIR` writes it."""
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root, clients=1)
    return root


def parse_cli(argv: list[str]) -> Namespace:
    """`gspo-async ARGV` as the real CLI parses it; an AssertionError names a rejected command line."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"gspo-async rejects the command line {argv}") from None


def check_learner(argv: list[str], config_file: Optional[Path] = None) -> tuple[Namespace, Config]:
    """A learner command line: the parser accepts it and its config with the overrides validates (CURVE keys, when
    named, load with the learner's own loader). config_file: where the config argument really lives."""
    args = parse_cli(argv)
    assert args.command == "learner", argv
    cfg = load_config(config_file or ROOT / args.config, args.overrides)
    if cfg.learner.curve.secret_key:
        CurveServerKeys.load(cfg.learner.curve.secret_key, cfg.learner.curve.authorized_clients)
    return args, cfg


def check_actor(argv: list[str]) -> tuple[Namespace, Actor]:
    """An actor command line: the parser accepts it, its overrides validate as the actor applies them to the
    learner's config (each under `actor.`), and the real Actor reads them (engine name, CURVE client keys)."""
    args = parse_cli(argv)
    assert args.command == "actor", argv
    parse_address(args.learner)
    load_config(None, [o if o.startswith("actor.") else f"actor.{o}" for o in args.overrides])  # Actor._configure
    actor = Actor(args.learner, args.id, args.overrides, args.config, None)
    actor.client.close()
    return args, actor
