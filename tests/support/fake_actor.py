"""A scripted actor process: the real ActorClient, canned responses instead of a model.

Run: python -m tests.support.fake_actor --address HOST:PORT --id NAME [--ack-timeout S] [--curve-secret F
--curve-server F]. It reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"cmd": "connect", "timeout": 5}           -> {"actor_id", "session", "version", "group_size"}
    {"cmd": "lease", "n": 4, "timeout": 5}     -> {"prompt_ids": [...], "reason"}      (leases are remembered)
    {"cmd": "push", "prompt_ids": [...]}       -> {"group_ids": [...]}   (canned groups for held leases; all if absent)
    {"cmd": "wait_acked", "timeout": 5}        -> {"acked": bool, "unacked": n}
    {"cmd": "status"}                          -> {"unacked", "version", "session", "actor_id", "held", "counters",
                                                   "acks": {group id: final ack status}}
    {"cmd": "run", "groups": N, "until_version": V, "timeout": 30} -> {"pushed": k}  (lease + push, then wait acks)
    {"cmd": "close", "return_leases": [...]}   -> {"closed": true}, then the process exits

Errors come back as {"error": "..."}. tests/support/actor_process.py drives it from a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from gspo_async.protocol.auth import CurveClientKeys
from gspo_async.protocol.client import ActorClient
from tests.support.canned import canned_group


class FakeActor:
    def __init__(self, args: argparse.Namespace):
        curve = CurveClientKeys.load(args.curve_secret, args.curve_server) if args.curve_secret else None
        self.acks: dict[str, str] = {}  # the ack log: group id -> final status, as the learner answered
        self.client = ActorClient(args.address, args.id, engine="fake", curve=curve, ack_timeout_s=args.ack_timeout,
                                  stats_fn=self.stats, on_ack=self._on_ack)
        self.held: dict[int, object] = {}  # prompt id -> PromptLease not pushed yet
        self.pushed = 0

    def _on_ack(self, group_id: str, status: str) -> None:
        self.acks[group_id] = status

    def stats(self) -> dict:
        return {"tokens_per_s": 100.0, "groups_total": self.pushed}

    def connect(self, timeout: float = 10.0) -> dict:
        w = self.client.connect(timeout)
        return {"actor_id": w.actor_id, "session": w.session, "version": w.version, "group_size": w.limits.group_size}

    def lease(self, n: int = 1, timeout: float = 5.0, wait_s: float = 0.0) -> dict:
        leases = self.client.lease(n, timeout_s=timeout, wait_s=wait_s)
        for lease in leases:
            self.held[lease.prompt_id] = lease
        return {"prompt_ids": [lease.prompt_id for lease in leases], "reason": self.client.last_lease_reason}

    def push(self, prompt_ids: list[int] | None = None, version: int | None = None) -> dict:
        """Canned groups for held leases, made by weights `version` (default: the newest announced)."""
        ids = list(self.held) if prompt_ids is None else prompt_ids
        group_ids = []
        for pid in ids:
            lease = self.held.pop(pid)
            group = canned_group(lease, self.client.limits.group_size,
                                 self.client.version if version is None else version, self.client.actor_id,
                                 vocab_size=self.client.limits.vocab_size)
            self.client.push(group)
            self.pushed += 1
            group_ids.append(group.group_id)
        return {"group_ids": group_ids}

    def wait_acked(self, timeout: float = 5.0) -> dict:
        return {"acked": self.client.wait_acked(timeout), "unacked": self.client.unacked()}

    def status(self) -> dict:
        c = self.client
        return {"unacked": c.unacked(), "version": c.version, "session": c.learner_session, "actor_id": c.actor_id,
                "held": sorted(self.held), "counters": dict(c.counters), "acks": dict(self.acks)}

    def run(self, groups: int = 10**9, timeout: float = 30.0, per_lease: int = 4,
            until_version: int | None = None) -> dict:
        """Lease and push canned groups until `groups` were pushed, the learner announced `until_version`, the
        prompts ran out or `timeout` passed; then wait for the acks."""
        deadline = time.monotonic() + timeout
        start = self.pushed
        while self.pushed - start < groups and time.monotonic() < deadline:
            if until_version is not None and self.client.version >= until_version:
                break
            got = self.lease(min(per_lease, groups - (self.pushed - start)), timeout=2.0, wait_s=0.2)
            if got["reason"] == "exhausted" and not got["prompt_ids"]:
                break
            self.push()
        self.client.wait_acked(max(0.0, deadline - time.monotonic()))
        return {"pushed": self.pushed - start}

    def close(self, return_leases: list[int] = ()) -> dict:
        self.client.close(return_leases=list(return_leases))
        return {"closed": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--id", default="fake")
    parser.add_argument("--ack-timeout", type=float, default=30.0)
    parser.add_argument("--curve-secret", default=None)
    parser.add_argument("--curve-server", default=None)
    actor = FakeActor(parser.parse_args())
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        cmd = request.pop("cmd")
        try:
            reply = getattr(actor, cmd)(**request)
        except Exception as err:
            reply = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        print(json.dumps(reply), flush=True)
        if cmd == "close":
            return 0
    actor.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
