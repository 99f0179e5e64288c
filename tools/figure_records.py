"""What the figure tools (test_timing, reliability_figures, quickstart_figures) share: where a measurement was made,
and the rewrite of a document's generated part between its two marker lines."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def provenance(cwd: Path) -> dict[str, Any]:
    """Taken just before a measurement: the CPU count, the 1-minute load average (a figure taken on a busy machine
    says so) and the checkout's commit, "+changes" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "load_1min_before": round(os.getloadavg()[0], 2),
            "commit": git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")}


def cpu_model() -> str:
    """The processor's model name (Linux), or the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rewrite(doc: str, begin: str, end: str, text: str, name: str) -> str:
    """`doc` with what lies between the `begin` and `end` markers replaced by `text` (the markers stay); `name`, the
    document, is named in the error when the markers are missing or repeated."""
    if doc.count(begin) != 1 or doc.count(end) != 1:
        raise ValueError(f"{name} needs exactly one pair of markers {begin} ... {end}: put them where the generated "
                         "text belongs")
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{text}{end}{tail}"
