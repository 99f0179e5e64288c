"""Render the reliability suite's recorded figures into docs/reliability.md.

The tests under tests/reliability/ write what they observed (from acknowledgement logs, the ledger and the final
checkpoint) to test-artifacts/reliability.json. This tool merges those records into docs/reliability-figures.json
(one entry per test; a soak run, GSPO_SOAK_S > 0, is kept apart from the default-duration run) and rewrites the
tables between the figure markers of docs/reliability.md from it. No figure in those tables is typed by hand.

    python tools/reliability_figures.py            merge test-artifacts/reliability.json, rewrite the doc
    python tools/reliability_figures.py --check    exit 1 if the doc's tables differ from the JSON's rendering
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tools' shared helpers
import figure_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "test-artifacts" / "reliability.json"
FIGURES = ROOT / "docs" / "reliability-figures.json"
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability-figures:begin (tools/reliability_figures.py) -->", "<!-- reliability-figures:end -->"

# test function -> (row label, figure keys for the "other figures" column, in order)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_random_actor_kills_and_restarts_lose_no_prompt_and_train_none_twice": (
        "actor churn", ("faults", "steps", "prompts_issued", "prompts_trained", "drop_reasons", "prompts_open_at_end",
                        "leases_orphaned", "leases_reissued", "actors_dead", "actors_left")),
    "test_learner_killed_with_unacked_groups_and_leases_resumes_and_loses_none": (
        "learner crash", ("learner_crashes", "unacked_groups_at_crash", "leases_held_at_crash", "resent_and_accepted",
                          "acked_groups_checked", "learner_starts", "steps")),
    "test_partitioned_actor_returns_with_stale_groups_that_are_counted_and_never_trained": (
        "partition", ("partitions", "late_groups", "late_accepted", "late_accepted_then_dropped_stale",
                      "late_duplicate", "late_for_dropped_prompt", "leases_reissued_during_partition",
                      "prompts_trained", "max_trained_staleness")),
    "test_kills_during_saves_leave_the_previous_checkpoint_and_resumes_lose_nothing": (
        "kills during saves", ("kills", "kills_mid_save", "resumes", "checkpoints_loadable_after_kill",
                               "steps_lost_to_kills", "records_rolled_back", "prompts_trained")),
    "test_full_disk_fails_every_save_but_training_goes_on_and_the_previous_checkpoint_resumes": (
        "full disk", ("full_disk_failed_saves", "checkpoint_failures_metric", "previous_checkpoint_unchanged",
                      "steps_trained_on_full_disk", "resumed_after_full_disk_from", "prompts_trained")),
    "test_hostile_peer_is_refused_and_counted_while_the_learner_trains_on": (
        "hostile input", ("bad_inputs_sent", "bad_inputs_rejected", "fuzz_frames", "fuzz_rejected", "learner_alive",
                          "attack_s")),
    "test_wellformed_fuzz_never_stops_the_learner_and_a_legitimate_actor_is_served": (
        "well-formed fuzz", ("fuzz_messages_sent", "fuzz_distinct_drawn", "fuzz_refused", "fuzz_refused_by_code",
                             "fuzz_acks", "legit_groups_accepted", "learner_restarts", "attack_s")),
    "test_wellformed_attacks_1_to_4_and_6_are_refused_or_bounded_and_the_learner_serves_on": (
        "attacks 1-4, 6", ("renamed_id_chars", "reward_1e308", "reused_group_id", "hog_prompts", "hog_fair_share",
                           "admission_total", "hog_second_reason", "weight_store_listens_on", "learner_restarts")),
    "test_memory_attacks_5_stay_bounded_and_the_learner_serves_on": (
        "memory attacks (5)", ("registered_ids", "actors_with_metric_rows", "status_requests_unread",
                               "rss_growth_status_flood_mb", "nil_header_mb", "rss_growth_after_nil_header_mb",
                               "multipart_bytes_sent", "multipart_connections_cut", "rss_growth_multipart_mb",
                               "learner_restarts")),
    "test_curve_learner_refuses_clients_without_an_authorised_key": ("CURVE", ()),
    "test_64_simulated_actors_keep_learner_memory_bounded_and_lose_no_acked_group": (
        "load, 64 actors", ("load_s", "steps", "groups_per_s", "acked_accepted_groups", "learner_rss_peak_mb",
                            "learner_rss_growth_mb", "learner_rss_bound_mb", "coordinator_largest",
                            "coordinator_bound", "dropped_share")),
}
SKIP = {"seed", "soak_s", "finished", "groups_lost", "groups_trained_twice", "prompts_trained_twice"}


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _row(name: str, rec: dict[str, Any]) -> str:
    label, keys = ROWS.get(name, (name, ()))
    keys = keys or tuple(k for k in sorted(rec) if k not in SKIP)
    lost = rec.get("groups_lost", "-")
    twice = rec.get("groups_trained_twice", rec.get("prompts_trained_twice", "-"))
    other = "; ".join(f"{k} {_value(rec[k])}" for k in keys if k in rec)
    return (f"| {label} | {_value(lost)} | {_value(twice)} | {other} | {rec.get('seed', '-')} | "
            f"{rec.get('finished', '-')} |")


def render(figures: dict[str, Any]) -> str:
    """The markdown between the markers: a table of the default-duration run and one of soak runs (if any)."""
    lines = []
    for title, soak in (("Default durations (CI)", False), ("Soak runs (GSPO_SOAK_S)", True)):
        entries = {k.split("@")[0]: v for k, v in figures.items() if ("@soak" in k) == soak}
        if not entries and soak:
            continue
        lines += [f"**{title}**" + (f", {sorted({v['soak_s'] for v in entries.values()})} s per fault loop"
                                     if soak else "") + ":", "",
                  "| test | groups lost | trained twice | figures recorded by the test | seed | finished |",
                  "|---|---|---|---|---|---|"]
        order = [n for n in ROWS if n in entries] + sorted(n for n in entries if n not in ROWS)
        lines += [_row(n, entries[n]) for n in order]
        missing = [ROWS[n][0] for n in ROWS if n not in entries and not soak]
        if missing:
            lines += ["", f"No recorded figures yet for: {', '.join(missing)} (run `bash tools/test.sh "
                          "tests/reliability`, then this tool)."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def merge(figures: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` records (test-artifacts/reliability.json) over `figures`; soak records under '<name>@soak'."""
    out = dict(figures)
    for name, rec in new.items():
        out[name + ("@soak" if float(rec.get("soak_s", 0) or 0) > 0 else "")] = rec
    return out


def rewrite(doc: str, table: str) -> str:
    return figure_records.rewrite(doc, BEGIN, END, table, DOC.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare the doc with the JSON's rendering")
    ap.add_argument("--artifact", type=Path, default=ARTIFACT, help="the tests' record (default: %(default)s)")
    args = ap.parse_args(argv)
    figures = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}
    doc = DOC.read_text()
    if args.check:
        if rewrite(doc, render(figures)) != doc:
            print(f"{DOC} differs from the rendering of {FIGURES}: run python tools/reliability_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    if not args.artifact.is_file():
        print(f"no {args.artifact}: run the reliability tests first (bash tools/test.sh tests/reliability)",
              file=sys.stderr)
        return 2
    figures = merge(figures, json.loads(args.artifact.read_text()))
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    DOC.write_text(rewrite(doc, render(figures)))
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
