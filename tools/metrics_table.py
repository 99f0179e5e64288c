"""Rewrite the metric table of docs/telemetry.md from gspo_async/telemetry/names.py (the one definition).

    python tools/metrics_table.py          # rewrite the table between the markers
    python tools/metrics_table.py --check  # exit 1 when the table is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from gspo_async.telemetry.names import metrics_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
BEGIN, END = "<!-- metrics:begin -->\n", "<!-- metrics:end -->"


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = head + BEGIN + metrics_markdown() + END + tail
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python tools/metrics_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote the metric table of {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
