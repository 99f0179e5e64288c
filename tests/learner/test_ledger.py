"""The ledger: the coordinator's journal of ended prompts, and its replay across crashes and resumes."""

import json

import pytest

from gspo_async.learner.ledger import LedgerWriter, ledger_summary, replay
from tests.learner.test_coordinator import group_for, make


def test_journal_records_each_ended_prompt_once_with_outcome_and_staleness():
    c, _ = make(n_items=5, groups_per_step=2, max_staleness=1, max_prompt_tokens=2)  # 3-token prompts: too long
    assert c.lease("a0", 1) == ([], "exhausted")
    journal = c.drain_journal()
    assert [r["prompt_id"] for r in journal] == [0, 1, 2, 3, 4]
    assert all(r["outcome"] == "dropped" and r["reason"] == "prompt_too_long" for r in journal)
    assert all("group_id" not in r for r in journal)  # no group was ever made for them
    assert c.drain_journal() == []  # drained

    c, _ = make(groups_per_step=2, max_staleness=1)
    leased, _ = c.lease("a0", 4)
    groups = [group_for(p, version=0, gid=f"g{p.prompt_id}") for p in leased]
    for g in groups:
        assert c.offer("a0", g) == "accepted"
    batch = c.take(2)
    c.mark_trained(batch)
    c.set_version(1)
    c.set_version(2)
    c.set_version(3)  # the other two groups are now 3 versions old: dropped as stale when taken
    assert c.take(2) == []
    journal = c.drain_journal()
    trained = [r for r in journal if r["outcome"] == "trained"]
    dropped = [r for r in journal if r["outcome"] == "dropped"]
    assert [r["group_id"] for r in trained] == [g.group_id for g in batch]
    assert all(r["trained_at"] == 0 and r["min_version"] == 0 and r["actor_id"] == "a0" for r in trained)
    assert sorted(r["prompt_id"] for r in dropped) == sorted(p.prompt_id for p in leased[2:])
    assert all(r["reason"] == "stale" and r["min_version"] == 0 for r in dropped)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def rec(pid, outcome="trained", **kw):
    base = {"prompt_id": pid, "outcome": outcome, "group_id": f"g{pid}", "actor_id": "a", "min_version": 0}
    if outcome == "trained":
        base["trained_at"] = 1
    else:
        base["reason"] = kw.pop("reason", "stale")
    return {**base, **kw}


def test_replay_drops_what_a_resume_rolled_back(tmp_path):
    first = LedgerWriter(tmp_path, resumed_from=-1)
    first.write(1, [rec(0), rec(1)])
    first.write(2, [rec(2), rec(3, "dropped")])
    first.write(3, [rec(4)])
    first.close()
    # killed after step 3; the newest checkpoint is step 2: prompts 4 (step 3) is open again and trained anew
    second = LedgerWriter(tmp_path, resumed_from=2)
    second.write(3, [rec(4, group_id="g4-again"), rec(5)])
    second.close()
    ledger = replay(tmp_path)
    assert sorted(ledger.trained) == [0, 1, 2, 4, 5] and sorted(ledger.dropped) == [3]
    assert ledger.trained[4]["group_id"] == "g4-again" and ledger.trained[4]["step"] == 3
    assert ledger.starts == 2 and ledger.rolled_back == 1 and not ledger.repeated
    s = ledger_summary(ledger)
    assert s["prompts_trained"] == 5 and s["groups_trained_twice"] == 0 and s["drop_reasons"] == {"stale": 1}
    assert [x["event"] for x in lines(tmp_path / "ledger.jsonl")] == ["start", "ended", "ended", "ended", "start",
                                                                       "ended"]


def test_replay_reports_a_prompt_trained_twice_in_one_lineage(tmp_path):
    w = LedgerWriter(tmp_path, resumed_from=-1)
    w.write(1, [rec(0)])
    w.write(2, [rec(0, group_id="other")])  # the bug the ledger exists to catch
    w.close()
    ledger = replay(tmp_path)
    assert len(ledger.repeated) == 1 and ledger.repeated[0]["group_id"] == "other"
    assert ledger_summary(ledger)["prompts_ended_twice"] == 1


def test_fresh_start_forgets_an_earlier_run_and_a_resume_from_zero_keeps_step_zero(tmp_path):
    w = LedgerWriter(tmp_path, resumed_from=-1)
    w.write(0, [rec(7, "dropped", reason="prompt_too_long")])
    w.write(1, [rec(0)])
    w.close()
    LedgerWriter(tmp_path, resumed_from=0).close()
    ledger = replay(tmp_path)
    assert sorted(ledger.dropped) == [7] and not ledger.trained
    LedgerWriter(tmp_path, resumed_from=-1).close()
    assert not replay(tmp_path).dropped


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_process_starts_a_clean_line(tmp_path):
    w = LedgerWriter(tmp_path, resumed_from=-1)
    w.write(1, [rec(0)])
    w.close()
    path = tmp_path / "ledger.jsonl"
    with open(path, "a") as f:
        f.write('{"event":"ended","run":"x","step":2,"prompts":[{"prom')  # a process killed mid-write
    assert sorted(replay(path).trained) == [0] and replay(path).partial_lines == 1
    w = LedgerWriter(tmp_path, resumed_from=1)
    w.write(2, [rec(1)])
    w.close()
    ledger = replay(path)
    assert sorted(ledger.trained) == [0, 1] and ledger.partial_lines == 1 and ledger.starts == 2


def test_a_broken_line_in_the_middle_is_reported_as_corruption(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"event":"start","run":"a","resumed_from":-1}\n{broken\n'
                    '{"event":"ended","run":"a","step":1,"prompts":[]}\n')
    with pytest.raises(ValueError, match="ledger.jsonl:2: not JSON"):
        replay(path)
