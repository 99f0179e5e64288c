"""The run's ledger: how every prompt ended (trained at which step, or dropped and why), across crashes and resumes.

``run_dir/ledger.jsonl`` holds one JSON object per line:

    {"event": "start", "run": R, "resumed_from": S}              a learner process started; S is the step of the
                                                                  checkpoint it loaded, -1 for a fresh start
    {"event": "ended", "run": R, "step": S, "prompts": [...]}     prompts that ended by training step S (records of
                                                                  Coordinator.drain_journal)

It is an audit trail kept apart from the counters: the reliability suite replays it to prove that no prompt was
trained twice and that no acknowledged group was lost, and a user can trace a group to the step that used it.

A learner resumed from step S forgets what happened after S (its coordinator state is the one saved at S), so
`replay` drops the lines of earlier processes whose step is above S. The learner writes the lines of step S before
it saves the checkpoint of step S, with the coordinator state and the journal taken under one lock, so the kept
lines are exactly the prompts that the checkpoint's state counts as ended.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.jsonl"


class LedgerWriter:
    """Appends to ``run_dir/ledger.jsonl``. `resumed_from`: the loaded checkpoint's step, or -1 for a fresh start.

    Lines are flushed as written; `sync` also fsyncs (before a checkpoint is saved). A write that fails (full disk)
    raises OSError: the caller logs it and trains on, as for a failed checkpoint.
    """

    def __init__(self, run_dir: Path, resumed_from: int):
        self.path = Path(run_dir) / LEDGER_FILE
        self.run = uuid.uuid4().hex[:12]
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self._file = open(self.path, "a", encoding="utf-8")
        if torn:  # the previous process died mid-line: end that line so ours starts clean
            self._file.write("\n")
        self._write({"event": "start", "run": self.run, "resumed_from": int(resumed_from)})

    def write(self, step: int, records: list[dict[str, Any]]) -> None:
        if records:
            self._write({"event": "ended", "run": self.run, "step": int(step), "prompts": records})

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _write(self, obj: dict[str, Any]) -> None:
        # One write call per line, so a process killed mid-line leaves at most one partial last line.
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()


@dataclass
class Ledger:
    """The surviving lineage of a run, replayed from its ledger file.

    trained / dropped: prompt id -> its record (with "step" added). repeated: records of prompts that ended a second
    time in the lineage (a correct run has none). trained_groups: group id -> times trained (all 1 in a correct
    run). starts: learner processes seen; rolled_back: records dropped because a later process resumed earlier.
    """

    trained: dict[int, dict[str, Any]] = field(default_factory=dict)
    dropped: dict[int, dict[str, Any]] = field(default_factory=dict)
    repeated: list[dict[str, Any]] = field(default_factory=list)
    trained_groups: Counter = field(default_factory=Counter)
    starts: int = 0
    rolled_back: int = 0
    partial_lines: int = 0

    @property
    def drop_reasons(self) -> Counter:
        return Counter(r["reason"] for r in self.dropped.values())

    def staleness(self) -> Counter:
        """Histogram of trained groups' staleness at training time (trained_at - min_version), in versions."""
        return Counter(r["trained_at"] - r["min_version"] for r in self.trained.values())


def replay(path: Path) -> Ledger:
    """Read a ledger file (or a run directory holding one) into its surviving lineage."""
    path = Path(path)
    if path.is_dir():
        path = path / LEDGER_FILE
    kept: list[tuple[int, dict[str, Any]]] = []  # (step, record) in file order
    out = Ledger()
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for number, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            # A crash cuts at most the line being written; the next line, if any, is a new process's start.
            if number + 1 < len(lines) and '"event":"start"' not in lines[number + 1]:
                raise ValueError(f"{path}:{number + 1}: not JSON, and not cut short by a crash (the next line is "
                                 "not a learner start): the ledger is corrupt")
            out.partial_lines += 1
            continue
        if obj.get("event") == "start":
            out.starts += 1
            resumed_from = int(obj["resumed_from"])
            before = len(kept)
            kept = [(step, r) for step, r in kept if step <= resumed_from]
            out.rolled_back += before - len(kept)
        elif obj.get("event") == "ended":
            kept += [(int(obj["step"]), r) for r in obj["prompts"]]
    for step, record in kept:
        record = {**record, "step": step}
        pid = int(record["prompt_id"])
        if pid in out.trained or pid in out.dropped:
            out.repeated.append(record)
        if record["outcome"] == "trained":
            out.trained.setdefault(pid, record)
            out.trained_groups[record["group_id"]] += 1
        else:
            out.dropped.setdefault(pid, record)
    return out


def ledger_summary(ledger: Ledger) -> dict[str, Any]:
    """Flat figures of a replayed ledger (for reports and the reliability suite's artifact)."""
    twice = sorted(g for g, n in ledger.trained_groups.items() if n > 1)
    return {"prompts_trained": len(ledger.trained), "prompts_dropped": len(ledger.dropped),
            "drop_reasons": dict(ledger.drop_reasons), "prompts_ended_twice": len(ledger.repeated),
            "groups_trained_twice": len(twice), "learner_starts": ledger.starts,
            "records_rolled_back": ledger.rolled_back, "partial_lines": ledger.partial_lines,
            "staleness_hist": {str(k): v for k, v in sorted(ledger.staleness().items())}}

