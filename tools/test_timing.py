"""Measure the test tiers and put their times in the README: no figure of the README's test-time table is typed.

    python tools/test_timing.py unit        run `bash tools/test.sh -m "not slow"` (the unit tier), record, render
    python tools/test_timing.py full        run `bash tools/test.sh` (everything, what CI runs), record, render
    python tools/test_timing.py full --cwd OLD --label before
                                            the same command in another checkout (e.g. `git worktree add OLD REV`),
                                            recorded as "full@before", to compare old and new side by side; the
                                            editable install is pointed back at this checkout afterwards
    python tools/test_timing.py --render    rewrite the README's table from docs/test-timing.json (no run)
    python tools/test_timing.py --check     exit 1 if the README's table is not the JSON's rendering

A record holds what the run printed and the machine it ran on: wall seconds of the whole command (the editable
install included, as CI runs it), pytest's own seconds and outcome counts from its summary line, the exit code, the
CPU count and the 1-minute load average before the run (a figure taken on a loaded machine says so), the commit and
the time. Further arguments after `--` go to pytest (for example `-- -n 2`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tools' shared helpers
import figure_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "test-timing.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- test-timing:begin (tools/test_timing.py) -->", "<!-- test-timing:end -->"
TIERS = {"unit": ["-m", "not slow"], "full": []}
# (no "deselected": pytest-xdist's summary line leaves it out, so it could not be recorded truthfully)
GOAL_RATIO = 0.60  # the full suite's wall time against the old checkout's (full@before), on the same machine
OUTCOMES = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")


def parse_summary(output: str) -> dict[str, Any]:
    """Outcome counts and pytest's seconds from the last summary line ('729 passed, 13 deselected in 116.23s')."""
    lines = [ln.strip(" =") for ln in output.splitlines() if re.search(r"\b(passed|failed|error|errors|no tests ran)\b"
                                                                         r".* in [\d.]+s", ln)]
    if not lines:
        raise ValueError("no pytest summary line ('N passed ... in S s') in the run's output: did pytest start?")
    line = lines[-1]
    counts = {("errors" if word.startswith("error") else word): int(n)
              for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", line)}
    seconds = float(re.search(r" in ([\d.]+)s", line).group(1))
    return {"pytest_s": seconds, **{k: counts.get(k, 0) for k in OUTCOMES}, "summary": line}


def measure(tier: str, cwd: Path, extra: list[str]) -> dict[str, Any]:
    """Run the tier's command in `cwd`, echoing its output, and return the record."""
    cmd = ["bash", "tools/test.sh", *TIERS[tier], *extra]
    where = figure_records.provenance(cwd)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:  # echo as it runs: a long run shows its progress
        sys.stdout.write(line)
        out.append(line)
    rc = proc.wait()
    wall = time.monotonic() - start
    return {"command": " ".join(cmd[:2] + [f'"{a}"' if " " in a else a for a in cmd[2:]]), "exit_code": rc,
            "wall_s": round(wall, 1), **parse_summary("".join(out)), **where,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def render(figures: dict[str, dict[str, Any]]) -> str:
    """The README's table (markdown) from the recorded figures."""
    rows = ["| run | command | wall time | pytest | passed | failed | skipped | machine | commit, date |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(figures, key=lambda k: (k.split("@")[0] != "unit", k)):
        r = figures[key]
        machine = f"{r['cpus']} cores{' ' + r['cpu'] if r.get('cpu') else ''}, load {r['load_1min_before']:g} before"
        failed = r["failed"] + r["errors"]
        rows.append(f"| {key} | `{r['command']}` | {_minutes(r['wall_s'])} | {_minutes(r['pytest_s'])} | "
                    f"{r['passed']} | {failed} | {r['skipped']} | {machine} | "
                    f"{r['commit']}, {r['finished']} |")
    if "full" in figures and "full@before" in figures:  # the side-by-side comparison the suite is held to
        new, old = figures["full"], figures["full@before"]
        ratio = new["wall_s"] / old["wall_s"]
        same = new["cpus"] == old["cpus"] and new.get("cpu") == old.get("cpu")
        rows += ["", f"Full suite against `full@before`: wall time {ratio:.2f}x ({_minutes(new['wall_s'])} vs "
                 f"{_minutes(old['wall_s'])}; goal at most {GOAL_RATIO:.2f}x: {'met' if ratio <= GOAL_RATIO else 'NOT met'})"
                 + ("" if same else "; measured on different machines, so the ratio is not a side-by-side figure")
                 + "."]
    missing = [t for t in TIERS if t not in figures]
    if not figures:
        rows = []
    if missing:
        rows += [""] if rows else []
        rows.append("Not measured yet: " + ", ".join(f"`python tools/test_timing.py {t}`" for t in missing) + ".")
    return "\n".join(rows) + "\n"


def rewrite(doc: str, table: str) -> str:
    return figure_records.rewrite(doc, BEGIN, END, table, "README.md")


def load() -> dict[str, dict[str, Any]]:
    return json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tier", nargs="?", choices=sorted(TIERS), help="the tier to run and record")
    ap.add_argument("--cwd", type=Path, default=ROOT, help="the checkout to run in (default: this one)")
    ap.add_argument("--label", default="", help="recorded as TIER@LABEL (e.g. 'before' for an older checkout)")
    ap.add_argument("--render", action="store_true", help="only rewrite the README's table from the JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    ap.add_argument("pytest_args", nargs="*", help="after --: further pytest arguments")
    args = ap.parse_args(argv)
    figures = load()
    if args.check:
        doc = README.read_text()
        if rewrite(doc, render(figures)) != doc:
            print("README.md's test-time table differs from docs/test-timing.json: python tools/test_timing.py "
                  "--render", file=sys.stderr)
            return 1
        return 0
    if args.tier:
        cwd = args.cwd.resolve()
        record = measure(args.tier, cwd, args.pytest_args)
        if cwd != ROOT:  # the other checkout's test.sh installed itself in editable mode: point it back here
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "constraints-cpu.txt", "-e", ".[test]"],
                           cwd=ROOT, check=True)
        key = args.tier + (f"@{args.label}" if args.label else "")
        figures[key] = record
        FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"recorded {key}: {record['summary']}; wall {record['wall_s']} s -> {FIGURES.relative_to(ROOT)}")
    elif not args.render:
        ap.error("name a tier to run (unit, full), or --render / --check")
    README.write_text(rewrite(README.read_text(), render(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
