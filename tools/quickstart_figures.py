"""Run the README's quickstart as a newcomer would and put what it printed in the README: no figure there is typed.

    python tools/quickstart_figures.py            # remove the quickstart's run and model directories, run
                                                  # `gspo-async local configs/quickstart.yaml`, record, render
    python tools/quickstart_figures.py --render   # rewrite the README's table from docs/quickstart-figures.json
    python tools/quickstart_figures.py --check    # exit 1 if the README's table is not the JSON's rendering

The record holds the config's SHA-256 (a test fails when the config changed after the run), the run's held-out
accuracy at every evaluation (from its summary.json), the wall time of the whole command (the tiny model's build and
warm-up included, as a newcomer waits for it), the machine, the commit and the time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tools' shared helpers
import figure_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "quickstart-figures.json"
README = ROOT / "README.md"
CONFIG = "configs/quickstart.yaml"
BEGIN, END = "<!-- quickstart-figures:begin (tools/quickstart_figures.py) -->", "<!-- quickstart-figures:end -->"


def measure() -> dict[str, Any]:
    """Run the quickstart from scratch (model build included) and return its record."""
    sys.path.insert(0, str(ROOT))
    from gspo_async.config import load_config

    cfg = load_config(ROOT / CONFIG)
    for path in (ROOT / cfg.run_dir, ROOT / cfg.model.path):  # a fresh start, as after `rm -rf runs/`
        shutil.rmtree(path, ignore_errors=True)
    where = figure_records.provenance(ROOT)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gspo_async", "local", CONFIG], cwd=ROOT)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the quickstart exited with {proc.returncode}: nothing recorded")
    summary = json.loads((ROOT / cfg.run_dir / "summary.json").read_text())
    return {"eval_accuracy": [[int(s), float(a)] for s, a in summary["eval_accuracy"]], "steps": summary["steps"],
            "config_sha256": config_digest(),
            "wall_s": round(wall, 1), **where, "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def config_digest() -> str:
    """SHA-256 of the quickstart config: a record made with another config is out of date."""
    return hashlib.sha256((ROOT / CONFIG).read_bytes()).hexdigest()


def render(record: dict[str, Any]) -> str:
    """The README's table and the accuracy along the way."""
    if not record:
        return "Not measured yet: `python tools/quickstart_figures.py`.\n"
    evals = record["eval_accuracy"]
    (_, first), (last_step, last) = evals[0], evals[-1]
    along = ", ".join(f"{a:.3f} (step {s})" for s, a in evals[1:-1])
    return ("| | held-out greedy accuracy (200 problems never trained on) |\n|---|---|\n"
            f"| when RL starts (after the warm-up) | {first:.3f} |\n"
            f"| after {last_step} steps | {last:.3f} ({100 * (last - first):+.0f} points) |\n"
            f"| wall time, model build included | {record['wall_s']:.0f} s |\n\n"
            f"Accuracy along the way: {along}. Measured by `python tools/quickstart_figures.py` on "
            f"{record['cpus']} cores (load {record['load_1min_before']:g} before), {record['commit']}, "
            f"{record['time']}.\n")


def rewrite(doc: str, table: str) -> str:
    return figure_records.rewrite(doc, BEGIN, END, table, "README.md")


def load() -> dict[str, Any]:
    return json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true", help="only rewrite the README's table from the JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = ap.parse_args(argv)
    if args.check:
        doc = README.read_text()
        if rewrite(doc, render(load())) != doc:
            print("README.md's quickstart table differs from docs/quickstart-figures.json: python "
                  "tools/quickstart_figures.py --render", file=sys.stderr)
            return 1
        return 0
    record = load() if args.render else measure()
    if not args.render:
        FIGURES.write_text(json.dumps(record, indent=1) + "\n")
    README.write_text(rewrite(README.read_text(), render(record)))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
