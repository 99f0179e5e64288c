"""`gspo-async`: one command, one subcommand per role.

Heavy modules (torch, transformers, zmq) are imported inside the subcommands that need them, so `--help` and
`config check` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from typing import Optional


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. learner.port=6000")


def _load(args: argparse.Namespace):
    from gspo_async.config import load_config

    return load_config(args.config, args.overrides)


def cmd_config_check(args: argparse.Namespace) -> int:
    from gspo_async.config import ConfigWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        cfg = _load(args)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(cfg.to_yaml(), end="")
    print(f"# config OK: {args.config or '<defaults>'}", file=sys.stderr)
    return 0


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from gspo_async.bootstrap.tiny import build_tiny

    path = build_tiny(args.dir, seed=args.seed)
    print(f"tiny model and tokenizer written to {path}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gspo_async.protocol.auth import generate_keys

    paths = generate_keys(args.dir, clients=args.clients)
    for p in paths:
        print(p)
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from gspo_async.learner.main import run_learner
    from gspo_async.learner.resume import learner_config
    from gspo_async.process import setup_logging

    setup_logging("learner")  # the resume lines below already go to the console
    cfg, resume = learner_config(args.config, args.overrides, resume=args.resume,
                                 start_if_missing=args.start_if_missing)
    return run_learner(cfg, resume=resume)


def cmd_actor(args: argparse.Namespace) -> int:
    from gspo_async.actor.main import run_actor

    return run_actor(args.learner, actor_id=args.id, config_path=args.config, overrides=args.overrides,
                     run_dir=args.run_dir)


def cmd_local(args: argparse.Namespace) -> int:
    from gspo_async.local import run_local

    return run_local(_load(args), resume=args.resume)


def cmd_preflight(args: argparse.Namespace) -> int:
    from gspo_async.preflight import main as preflight_main

    return preflight_main(_load(args))


def cmd_status(args: argparse.Namespace) -> int:
    from gspo_async.protocol.status import print_status

    return print_status(args.learner, timeout_s=args.timeout, key=args.key, server_key=args.server_key)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from gspo_async.dashboard.server import main as dashboard_main

    return dashboard_main(args.run_dir, args.host, args.port) or 0


def cmd_report(args: argparse.Namespace) -> int:
    from gspo_async.dashboard.report import MissingExtraError, write_report

    try:
        print(write_report(args.run_dir, args.out))
    except (MissingExtraError, FileNotFoundError, ValueError) as err:  # said plainly, without a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gspo-async", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a config and print it resolved")
    _add_config_args(c)
    c.set_defaults(func=cmd_config_check)

    p = sub.add_parser("init-tiny", help="build the tiny local model and tokenizer (no hub access)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_tiny)

    p = sub.add_parser("keys", help="generate CurveZMQ key pairs for a non-loopback learner")
    p.add_argument("dir")
    p.add_argument("--clients", type=int, default=1, help="number of client key pairs")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("learner", help="run the learner (binds the control/rollout port)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its newest valid "
                   "checkpoint, with the run's saved settings (RUN_DIR/config.yaml) and the overrides given here")
    p.add_argument("--start-if-missing", action="store_true", help="with --resume: start a fresh run when run_dir "
                   "holds none (the first start of a restartable job) instead of refusing")
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("actor", help="run an actor against a learner")
    p.add_argument("--learner", required=True, help="HOST:PORT of the learner")
    p.add_argument("--id", default=None, help="actor id (default: host-pid)")
    p.add_argument("--config", default=None, help="local overrides of actor settings (device, engine, keys)")
    p.add_argument("--run-dir", default=None, help="write this actor's metrics.jsonl here")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the actor section")
    p.set_defaults(func=cmd_actor)

    p = sub.add_parser("local", help="learner + actors on this machine (the quickstart)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("preflight", help="check model, prompts and reward on a few items before a run (exit 1 on "
                       "any error)")
    _add_config_args(p, required=True)
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("status", help="print the fleet of a running learner")
    p.add_argument("learner", help="HOST:PORT")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--key", default=None, help="CURVE client secret key (clientN.key_secret from `gspo-async keys`)")
    p.add_argument("--server-key", default=None, help="the learner's server.key (default: next to --key)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dashboard", help="serve the live dashboard of a run directory",
                       description="Serve the live dashboard of a running or finished run (no network needed). A "
                       "run directory that does not exist yet is waited for.")
    p.add_argument("run_dir", help="the run directory the learner writes (run_dir in the config; holds metrics.jsonl)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface "
                   "(default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8265, help="port to listen on; 0 picks any free port (default: 8265)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="write a static HTML report of a finished run",
                       description="Write a static HTML report with PNG plots of a run (needs the report extra: "
                       "python -m pip install 'gspo-async[report]').")
    p.add_argument("run_dir", help="the run directory the learner wrote (holds metrics.jsonl), or the file itself")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from gspo_async.config import ConfigError
    from gspo_async.process import StartupError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, StartupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The console script and ``python -m gspo_async``: :func:`main`, then :func:`~gspo_async.process.leave`, also
    after a crash (its traceback printed, exit code 1) or argparse's exit (--help, a usage error)."""
    from gspo_async.process import leave

    try:
        code = main()
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # noqa: BLE001 - a crash still ends through leave(), loudly
        traceback.print_exc()
        code = 1
    leave(code)


if __name__ == "__main__":
    entry()
