"""The run digest by hand: events between records, counter restarts, resumes, run state, counts and drops."""

from gspo_async.dashboard.summary import RunDigest, events, run_state, run_summary


def rec(step: int, t: float, **values) -> dict:
    return {"time": t, "role": "learner", "step": step, **{k.replace("__", "/"): v for k, v in values.items()}}


def test_events_are_increases_and_restarts():
    records = [
        rec(0, 0.0, eval__runs=1, learner__started_at=50.0, actors__joined=2),  # first record: counts > 0 are events
        rec(1, 1.0, eval__runs=1, learner__started_at=50.0, actors__joined=2),  # nothing new
        rec(2, 2.0, eval__runs=2, learner__started_at=50.0, actors__joined=3, weights__failures=1),
        rec(2, 9.0, eval__runs=0, learner__started_at=60.0, actors__joined=0),  # a resumed process: counters restart
        rec(3, 10.0, eval__runs=1, learner__started_at=60.0, actors__joined=1, checkpoint__saves=1),
    ]
    got = [(e["step"], e["label"], e["count"]) for e in events(records)]
    assert got == [(0, "evaluation", 1), (0, "actor joined", 2),
                   (2, "evaluation", 1), (2, "actor joined", 1), (2, "weight-sync failure", 1),
                   (2, "resume", 1),
                   (3, "evaluation", 1), (3, "checkpoint", 1), (3, "actor joined", 1)]


def test_run_state():
    assert run_state([], 100.0) == "empty"
    assert run_state([rec(1, 90.0)], 100.0) == "live"
    assert run_state([rec(1, 10.0)], 100.0) == "stopped"
    assert run_state([rec(1, 90.0, learner__finished=1)], 100.0) == "ended"


def test_counts_are_the_newest_values_and_incremental_feeding_agrees():
    records = [rec(1, 1.0, train__groups=8, staleness__dropped=0, leases__expired=0, learner__busy_frac=0.5,
                   leases__capacity=0),
               rec(2, 2.0, train__groups=16, staleness__dropped=3, leases__expired=1, learner__busy_frac=0.9),
               rec(3, 3.0, train__groups=None)]  # a null never hides the newest real value
    whole = run_summary(records, 3.5)
    assert whole["counts"]["train/groups"] == 16 and whole["drops"]["staleness/dropped"] == 3
    assert whole["counts"]["leases/expired"] == 1 and whole["drops"]["drops/late"] is None
    assert whole["bottleneck"]["label"] == "unknown"  # judged on the newest record, which has no busy fraction
    assert run_summary(records[:2], 3.5)["bottleneck"]["label"] == "learner"
    digest = RunDigest()
    for r in records:
        digest.feed([r])
    assert digest.summary(3.5) == whole
