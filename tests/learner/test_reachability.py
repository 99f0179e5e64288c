"""Which live actors a broadcast lists, with a fake clock: a closed connection, the last words after it, silence."""

from gspo_async.learner.reachability import SUSPECT_HEARTBEATS, Reachability


def make(interval_s=1.0, timeout_s=10.0):
    now = [0.0]
    return Reachability(interval_s, timeout_s, clock=lambda: now[0]), now


def test_a_closed_connection_is_out_until_a_message_more_than_a_heartbeat_later():
    r, now = make()
    r.closed("a")
    assert r.reachable(["a", "b"]) == ["b"]
    now[0] += 0.2
    r.heard("a")  # read just after the close: a killed actor's last words
    assert r.reachable(["a", "b"]) == ["b"]
    now[0] += 0.81  # 1.01 s after the close
    r.heard("a")
    assert r.reachable(["a", "b"]) == ["a", "b"]


def test_a_registration_or_a_death_forgets_the_cut():
    r, _ = make()
    r.closed("a")
    r.forget("a")
    assert r.reachable(["a"]) == ["a"]


def test_the_silence_window_is_a_few_heartbeats_and_off_when_heartbeats_are_sparse():
    assert make(1.0, 10.0)[0].heard_within_s == SUSPECT_HEARTBEATS * 1.0
    assert make(4.0, 10.0)[0].heard_within_s is None  # 3 x 4 s would pass the 10 s death timeout
