"""The weight-sync membership with a fake clock: probing, failure, back-off doubling up to exclude_s, return after
the hold, a dead actor leaving."""

import pytest

from gspo_async.learner.weight_sync import WeightSyncMembership


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


class Probe:
    """Which receivers listen; records what the membership asked about."""

    def __init__(self, listening) -> None:
        self.listening = set(listening)
        self.asked: list[list[str]] = []

    def __call__(self, ids: list[str]) -> list[str]:
        self.asked.append(list(ids))
        return [a for a in ids if a in self.listening]


def make(timeout_s=10.0, exclude_s=60.0, join_wait_s=0.0):
    clock = Clock()
    return WeightSyncMembership(timeout_s, exclude_s, join_wait_s, clock=clock), clock


def test_members_are_live_actors_whose_receiver_listens_and_are_probed_once():
    m, _ = make()
    probe = Probe({"a0", "a1"})
    assert m.members(["a2", "a1", "a0"], probe) == ["a0", "a1"]
    assert probe.asked == [["a0", "a1", "a2"]]
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1"]
    assert probe.asked[-1] == ["a2"]  # a0 and a1 are known to listen: only a2 is asked again
    probe.listening.add("a2")
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1", "a2"]
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1", "a2"] and probe.asked[-1] == ["a2"]


def test_changed_until_a_round_succeeds_and_after_a_failure():
    m, _ = make()
    probe = Probe({"a0", "a1"})
    members = m.members(["a0", "a1"], probe)
    assert m.changed(members)
    m.succeeded(members)
    assert not m.changed(m.members(["a0", "a1"], probe))
    assert m.failed(members, missing=[]) == []  # a failure nobody is blamed for: rebuild, hold no one
    assert m.changed(m.members(["a0", "a1"], probe)) and m.excluded == {}


def test_failure_backs_off_doubling_up_to_exclude_s_and_returns_after_the_hold():
    m, clock = make(timeout_s=10.0, exclude_s=35.0)
    probe = Probe({"a0", "a1"})
    live = ["a0", "a1"]
    holds = []
    for _ in range(4):
        members = m.members(live, probe)
        assert members == ["a0", "a1"]
        assert m.failed(members, missing=["a1"]) == ["a1"]
        hold = m.excluded["a1"] - clock.t
        holds.append(hold)
        assert m.members(live, probe) == ["a0"]  # held out: the others still get weights
        clock.t += hold - 0.001
        assert m.members(live, probe) == ["a0"]  # just before the hold ends
        clock.t += 0.002
    assert holds == pytest.approx([10.0, 20.0, 35.0, 35.0])  # timeout, 2 x timeout, then capped at exclude_s
    assert m.members(live, probe) == ["a0", "a1"]  # back after the hold
    m.succeeded(["a0", "a1"])
    assert m.failed(["a0", "a1"], missing=["a1"]) == ["a1"]
    assert m.excluded["a1"] - clock.t == pytest.approx(10.0)  # a success reset the count: the back-off starts over


def test_exclude_zero_never_holds_anyone():
    m, _ = make(exclude_s=0.0)
    probe = Probe({"a0", "a1"})
    members = m.members(["a0", "a1"], probe)
    assert m.failed(members, missing=["a1"]) == []
    assert m.members(["a0", "a1"], probe) == ["a0", "a1"] and m.excluded == {}


def test_missing_actors_that_were_not_members_are_not_held():
    m, _ = make()
    assert m.failed(["a0"], missing=["a0", "zz"]) == ["a0"]
    assert set(m.excluded) == {"a0"}


def test_a_dead_actor_leaves_at_once_and_is_probed_afresh_when_it_returns():
    m, clock = make(timeout_s=10.0, exclude_s=60.0)
    probe = Probe({"a0", "a1", "a2"})
    live = ["a0", "a1", "a2"]
    members = m.members(live, probe)
    m.succeeded(members)
    m.failed(members, missing=["a2"])
    m.failed(members, missing=["a2"])  # two failures: the next hold would be 40 s
    assert m.members(["a0", "a1"], probe) == ["a0", "a1"]  # heartbeats declared a2 dead
    assert "a2" not in m.excluded and "a2" not in m.failures and "a2" not in m.present
    probe.asked.clear()
    assert m.members(live, probe) == ["a0", "a1", "a2"]  # it came back: no hold, probed again
    assert probe.asked == [["a2"]]
    m.failed(["a0", "a1", "a2"], missing=["a2"])
    assert m.excluded["a2"] - clock.t == 10.0  # its old failures were forgotten


def test_leave_reports_whether_the_actor_was_in_the_last_round():
    m, _ = make()
    probe = Probe({"a0", "a1"})
    m.succeeded(m.members(["a0", "a1"], probe))
    assert m.leave("a1") is True
    assert m.leave("zz") is False
    assert m.changed(m.members(["a0"], probe))


def test_newcomers_wait_for_the_next_rebuild_at_most_join_wait_s():
    m, clock = make(join_wait_s=5.0)
    probe = Probe({"a0", "a1", "a2", "a3"})
    m.succeeded(m.members(["a0", "a1"], probe))  # the run's first members join at once: nobody to wait for
    assert m.published == ["a0", "a1"]
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1"]  # a2 arrives: no rebuild for it alone yet
    assert not m.changed(["a0", "a1"])
    clock.t += 3.0
    assert m.members(["a0", "a1", "a2", "a3"], probe) == ["a0", "a1"]  # a3 too; a2 has waited 3 s of 5
    clock.t += 1.999
    assert m.members(["a0", "a1", "a2", "a3"], probe) == ["a0", "a1"]
    clock.t += 0.002  # a2's wait is over: both newcomers join in one rebuild
    assert m.members(["a0", "a1", "a2", "a3"], probe) == ["a0", "a1", "a2", "a3"]
    m.succeeded(["a0", "a1", "a2", "a3"])
    assert m.joining == {}


def test_a_death_takes_the_waiting_newcomers_into_its_rebuild_at_once():
    m, clock = make(join_wait_s=5.0)
    probe = Probe({"a0", "a1", "a2"})
    m.succeeded(m.members(["a0", "a1"], probe))
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1"]
    clock.t += 1.0
    assert m.members(["a0", "a2"], probe) == ["a0", "a2"]  # a1 died: one rebuild for the death and the arrival


def test_a_held_out_member_makes_a_rebuild_that_takes_the_newcomers():
    m, clock = make(join_wait_s=5.0)
    probe = Probe({"a0", "a1", "a2"})
    members = m.members(["a0", "a1"], probe)
    m.succeeded(members)
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a1"]
    m.succeeded(["a0", "a1"])
    m.failed(["a0", "a1"], missing=["a1"])  # a failed round: the next one rebuilds anyway
    assert m.members(["a0", "a1", "a2"], probe) == ["a0", "a2"]


def test_newcomers_join_at_once_when_the_fleet_has_no_members():
    m, _ = make(join_wait_s=5.0)
    probe = Probe({"a0", "a1"})
    m.succeeded([])  # a round to nobody (every actor had left)
    assert m.members(["a0", "a1"], probe) == ["a0", "a1"]


@pytest.mark.parametrize("kw", [dict(timeout_s=0, exclude_s=1), dict(timeout_s=1, exclude_s=-1),
                                dict(timeout_s=1, exclude_s=1, join_wait_s=-1)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="timeout_s|exclude_s|join_wait_s"):
        WeightSyncMembership(**kw)
