"""Shared pieces of the benchmarks: machine description, text and markdown tables, JSON results, docs/benchmarks.md.

A table is a list of row dicts plus columns ``(key, header, format)``: `key` names a row field (dotted for nested
dicts, e.g. ``"sync.samples_per_s"``) or is a function of the row; `format` is a format spec such as ``".2f"``
(None -> str). Missing values print as ``-``.

    PYTHONPATH=. python tools/bench/report.py     # re-render docs/benchmarks.md (same as run_all --render-only)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tools" / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
# The settings the system benchmarks (pipeline, learning, churn, evaluation, precision) were designed and published
# with, put in front of each run's own overrides: the quickstart config they start from now filters zero-variance
# groups (which would drop every group of a simulated actor's scoreless responses) and admits one version of lag.
SYSTEM_BENCH_BASE = ["filter_groups.enabled=false", "off_policy.max_staleness=2"]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tools.figure_records import cpu_model  # noqa: E402  (one reading of the CPU model for every figure tool)

Column = tuple[Union[str, Callable[[dict], Any]], str, Optional[str]]


# ----------------------------------------------------------------------------------------------- machine and JSON
def machine_info() -> dict[str, Any]:
    """CPU model and count, memory, load average, Python and torch versions, and the current time."""
    info: dict[str, Any] = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
                            "python": platform.python_version(), "platform": platform.platform()}
    info["cpu"] = cpu_model()
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        info["memory_gb"] = round(mem_kb / 2**20, 1)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Write `result` as JSON with a ``machine`` entry (unless it has one, e.g. taken when the benchmark started)
    and the command line (unless it has them); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "argv": sys.argv[1:], **result}
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return path


def load_result(name: str, results_dir: Path = RESULTS) -> Optional[dict[str, Any]]:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------- tables
def _get(row: dict, key: Union[str, Callable[[dict], Any]]) -> Any:
    if callable(key):
        try:
            return key(row)
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _cell(value: Any, fmt: Optional[str]) -> str:
    if value is None:
        return "-"
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def cells(rows: list[dict], columns: list[Column]) -> list[list[str]]:
    return [[_cell(_get(r, key), fmt) for key, _, fmt in columns] for r in rows]


def text_table(rows: list[dict], columns: list[Column]) -> str:
    """A fixed-width table for the terminal: numbers right-aligned, text left-aligned."""
    body = cells(rows, columns)
    headers = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in body) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def markdown_table(rows: list[dict], columns: list[Column]) -> str:
    body = cells(rows, columns)
    headers = [h for _, h, _ in columns]
    numeric = [bool(body) and all(_looks_numeric(r[i]) for r in body) for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return text == "-"


# ----------------------------------------------------------------------------------------------- docs/benchmarks.md
def machine_line(machine: Optional[dict]) -> str:
    if not machine:
        return "machine not recorded"
    parts = [f"{machine.get('cpus')} CPU cores ({machine.get('cpu', '?')})"]
    if machine.get("memory_gb"):
        parts.append(f"{machine['memory_gb']} GB RAM")
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}")
    parts.append(f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}")
    if machine.get("load_average"):
        parts.append(f"1-min load average {machine['load_average'][0]:.1f}")
    return ", ".join(parts)


def _section_transport(r: dict, doc_dir: Path) -> str:
    cols: list[Column] = [("size", "group", None), ("group_size", "G", "d"), ("response_tokens", "tokens", "d"),
                          (lambda x: "on" if x["curve"] else "off", "CURVE", None),
                          ("protocol_groups_per_s", "protocol groups/s", ".0f"),
                          ("protocol_MB_per_s", "protocol MB/s", ".1f"),
                          ("raw_groups_per_s", "raw ZeroMQ groups/s", ".0f"),
                          ("protocol_over_raw", "protocol / raw", ".2f")]
    return ("Rollout path: `ActorClient.push` -> `LearnerServer` (decode, validate, de-duplicate, buffer, ack) against "
            "raw ZeroMQ PUSH/PULL of the same bytes, median of runs (`tools/bench/transport.py`).\n\n"
            + markdown_table(r["rows"], cols))


def _section_weights(r: dict, doc_dir: Path) -> str:
    rows = [x for x in r["rows"] if x["method"] != "publish" or x["bucket"] in ("4 MiB", "one per dtype", "per-tensor")]
    cols: list[Column] = [("params_m", "params (M)", ".1f"), ("receivers", "receivers", "d"),
                          ("method", "method", None),
                          ("bucket", "bucket", None), ("seconds", "seconds", ".4f"), ("gb_per_s", "GB/s", ".2f"),
                          ("frac_of_flat", "vs raw flat", ".2f")]
    return ("Weight broadcast over gloo, learner to N receiver processes: the full `WeightPublisher` round against "
            "raw broadcasts of the same bytes (`tools/bench/weights.py`; rows for a few bucket sizes, all in "
            "the JSON).\n\n" + markdown_table(rows, cols))


def _section_logprobs(r: dict, doc_dir: Path) -> str:
    cols: list[Column] = [("vocab", "vocab", "d"), ("full_logprobs_fp32_mb", "full fp32 log-softmax MB", ".0f"),
                          ("naive.peak_extra_mb", "naive peak MB", ".1f"),
                          ("chunked.peak_extra_mb", "chunked peak MB", ".1f"),
                          ("memory_ratio", "memory chunked/naive", ".3f"), ("naive.time_s", "naive s", ".3f"),
                          ("chunked.time_s", "chunked s", ".3f"), ("time_ratio", "time chunked/naive", ".2f")]
    return (f"Token log-probabilities from hidden states, forward + backward, N={r.get('tokens')} tokens, "
            f"H={r.get('hidden')}, 1 thread (`tools/bench/logprobs.py`).\n\n" + markdown_table(r["rows"], cols))


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _shown_args(argv: list[str]) -> str:
    """The command-line arguments worth showing: output locations left out."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--img-dir"):
            skip = True
        else:
            shown.append(a)
    return " ".join(shown) or "(defaults)"


def render_benchmarks(results_dir: Path = RESULTS, doc_dir: Path = DOC.parent, quick: bool = False) -> str:
    """The whole benchmarks document from the JSON results in `results_dir` (links relative to `doc_dir`)."""
    from tools.bench import (churn, fleet_eval, learning, microbatch, peer_trl, pipeline, precision,  # they import it
                             profile_step)
    from tools.gpu.smoke_vllm import render_markdown as render_vllm_smoke
    found = {name: load_result(name, results_dir) for name in ("pipeline", "learning", "transport", "weights",
                                                               "logprobs", "vllm_smoke", "microbatch", "churn",
                                                               "precision", "learning_filter", "fleet_eval",
                                                               "peer_trl-arithmetic", "peer_trl-sort", "profile_step",
                                                               "stability-s2", "stability-filter-s1")}
    found["peer_trl-levers"] = peer_trl.load_levers("arithmetic", results_dir)
    # the other benchmarks' own "machine" may be a string (platform.machine()): only dicts describe one
    machines = [r["machine"] for r in found.values() if r and isinstance(r.get("machine"), dict)]
    when = sorted(m["time"] for m in machines)
    head = ["# Benchmarks", "",
            f"Generated by `tools/bench/run_all` from the JSON in `{_rel(results_dir)}/` (re-render without running: "
            f"`tools/bench/run_all{' --quick' if quick else ''} --render-only`). Each script compares alternatives "
            "side by side in one run; read the ratios, not the absolute times.", "",
            *(["**Quick pass** (`run_all --quick`): small settings, for checking that everything runs; the numbers "
               "are not the published ones.", ""] if quick else []),
            f"- Machine: {machine_line(machines[0] if machines else None)}.",
            f"- Measured: {when[0]} to {when[-1]}." if when else "- Measured: (no results yet).",
            "- The machine is shared: other jobs (tests, builds) ran at the same time, which slows some runs and "
            "adds noise; the load average at the start of each benchmark is in its JSON.", ""]
    sections = [("peer_trl-arithmetic", "Side by side with TRL: time to accuracy (quickstart task)",
                 peer_trl.render_markdown),
                ("peer_trl-levers", "Levers tried on the quickstart task", peer_trl.render_levers),
                ("peer_trl-sort", "Side by side with TRL: time to accuracy (sort task)", peer_trl.render_markdown),
                ("profile_step", "Where a step's time goes: the quickstart's processes under cProfile",
                 lambda r, d: profile_step.render_markdown(r, d, load_result("profile_step-before", results_dir))),
                ("stability-s2", "Stability: the previous quickstart settings (max_staleness 2, no filtering)",
                 lambda r, d: learning.render_markdown({**r, "plots": []}, d)),
                ("stability-filter-s1", "Stability: the quickstart's settings (filter_groups, max_staleness 1)",
                 lambda r, d: learning.render_markdown({**r, "plots": []}, d)),
                ("pipeline", "Pipeline: synchronous vs asynchronous", pipeline.render_markdown),
                ("learning", "Learning: time to accuracy, GSPO vs token-level ratios under staleness",
                 learning.render_markdown),
                ("learning_filter", "Learning: filtering zero-variance groups (dynamic sampling)",
                 lambda r, d: learning.render_markdown({**r, "plots": []}, d)),  # its plots stay under runs/
                ("fleet_eval", "Evaluation on the fleet: the learner's busy fraction", fleet_eval.render_markdown),
                ("transport", "Transport", _section_transport), ("weights", "Weight sync", _section_weights),
                ("logprobs", "Chunked log-probabilities", _section_logprobs),
                ("microbatch", "Learner micro-batches: padding vs a token budget", microbatch.render_markdown),
                ("churn", "Actor churn: killed actors against the learner's pace", churn.render_markdown),
                ("precision", "Learner precision: fp32 vs bf16 autocast vs pure bf16", precision.render_markdown),
                ("vllm_smoke", "vLLM actor smoke test (GPU)", lambda r, _: render_vllm_smoke(r))]
    stability = ("(not run yet: `PYTHONPATH=. python tools/bench/learning.py --seeds 0,1,2 --steps 300 --eval-every 25 "
                 "--out tools/bench/results/{}.json ...`, see tools/bench/run_all)")
    missing = {"stability-s2": stability.format("stability-s2"),
               "stability-filter-s1": stability.format("stability-filter-s1"),
               "peer_trl-levers": "(no variants run yet: `tools/bench/peer_trl.py --skip-trl --tag NAME --set ...`)",
               "peer_trl-sort": "(not run yet: `PYTHONPATH=. python tools/bench/peer_trl.py --task sort`)",
               "vllm_smoke": "(not run yet: no GPU has been lent. `bash tools/gpu/smoke.sh` on a GPU machine "
                             "writes `vllm_smoke.json`; copy it to tools/bench/results/)"}
    body = []
    for name, title, render in sections:
        body += [f"## {title}", ""]
        r = found[name]
        if r is None:
            body += [missing.get(name, f"(no results: run `PYTHONPATH=. python tools/bench/{name}.py`)"), ""]
            continue
        body += [render(r, doc_dir), ""]
        if isinstance(r.get("machine"), dict):
            args = _shown_args(r.get("argv") or [])
            body += [f"<sub>Measured {r['machine'].get('time')}; {machine_line(r['machine'])}; arguments: "
                     f"`{args}`</sub>", ""]
        elif r.get("time") or (r.get("meta") or {}).get("argv") is not None:
            cpus = r.get("cpus") or r.get("meta", {}).get("cpus")
            body += [f"<sub>Measured {r.get('time', '(time not recorded)')}; {cpus} CPU cores</sub>", ""]
    return "\n".join(head + body).rstrip() + "\n"


def main() -> int:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render_benchmarks())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
