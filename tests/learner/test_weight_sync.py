"""The weight-sync membership and cohorts with a fake clock: probing, failure, back-off doubling up to exclude_s,
return after the hold, a dead actor leaving; the split into broadcast groups as actors die and arrive."""

import pytest

from gspo_async.learner.weight_sync import Cohorts, WeightSyncMembership, deal


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


def make(timeout_s=10.0, exclude_s=60.0):
    clock = Clock()
    return WeightSyncMembership(timeout_s, exclude_s, clock=clock), clock


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


def test_a_failure_nobody_is_blamed_for_holds_no_one():
    m, _ = make()
    probe = Probe({"a0", "a1"})
    members = m.members(["a0", "a1"], probe)
    assert m.failed(members, missing=[]) == []
    assert m.members(["a0", "a1"], probe) == ["a0", "a1"] and m.excluded == {}


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


@pytest.mark.parametrize("kw", [dict(timeout_s=0, exclude_s=1), dict(timeout_s=1, exclude_s=-1)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="timeout_s|exclude_s"):
        WeightSyncMembership(**kw)


# ----- cohorts -----

def names(n, prefix="a"):
    return [f"{prefix}{i:02d}" for i in range(n)]


@pytest.mark.parametrize("n,size,sizes", [(0, 4, []), (1, 4, [1]), (4, 4, [4]), (5, 4, [3, 2]), (10, 4, [4, 3, 3]),
                                          (16, 8, [8, 8]), (17, 8, [6, 6, 5]), (7, 0, [7])])
def test_deal_makes_the_fewest_cohorts_of_at_most_size_with_sizes_differing_by_at_most_one(n, size, sizes):
    cohorts = deal(names(n), size)
    assert [len(c) for c in cohorts] == sizes
    assert [m for c in cohorts for m in c] == names(n)  # every member once, in order


def cohorts(size=4, join_wait_s=5.0):
    clock = Clock()
    return Cohorts(size, join_wait_s, clock=clock), clock


def test_the_first_members_are_dealt_at_once_and_an_unchanged_fleet_keeps_its_cohorts():
    c, _ = cohorts(size=4)
    first = c.plan(names(8))
    assert first == [tuple(names(8)[:4]), tuple(names(8)[4:])] and c.guests == {}
    assert c.plan(reversed(names(8))) == first  # same members, any order: same cohorts, no new group


def test_a_death_rebuilds_only_its_own_cohort():
    c, _ = cohorts(size=4)
    a, b = c.plan(names(8))
    after = c.plan([m for m in names(8) if m != "a05"])
    assert after[0] == a  # untouched, and first: it gets the version before the rebuilt one forms
    assert after[1:] == [("a04", "a06", "a07")]


def test_newcomers_get_a_guest_cohort_at_once_and_settle_into_one_with_room_after_join_wait():
    c, clock = cohorts(size=4, join_wait_s=5.0)
    c.plan(names(8))
    c.plan([m for m in names(8) if m != "a05"])  # a05 died: ('a04', 'a06', 'a07') has room for one
    clock.t += 1.0
    plan = c.plan([m for m in names(8) if m != "a05"] + ["b00"])
    assert plan == [tuple(names(4)), ("a04", "a06", "a07"), ("b00",)]  # the settled groups are not touched
    assert set(c.guests) == {("b00",)}
    clock.t += 4.999
    assert c.plan([m for m in names(8) if m != "a05"] + ["b00"]) == plan  # not yet
    clock.t += 0.002
    assert c.plan([m for m in names(8) if m != "a05"] + ["b00"]) == [tuple(names(4)), ("a04", "a06", "a07", "b00")]
    assert c.guests == {}  # only the cohort with room was rebuilt


def test_a_death_takes_the_guests_into_its_rebuild_at_once():
    c, clock = cohorts(size=4)
    c.plan(names(8))
    c.plan(names(8) + ["b00"])  # a replacement arrives before anyone died: a guest
    clock.t += 1.0
    live = [m for m in names(8) if m != "a02"] + ["b00"]
    assert c.plan(live) == [tuple(names(8)[4:]), ("a00", "a01", "a03", "b00")] and c.guests == {}


def test_a_dead_guest_is_dealt_with_the_other_guests():
    c, _ = cohorts(size=4)
    c.plan(names(4))
    c.plan(names(4) + ["b00"])
    c.plan(names(4) + ["b00", "b01"])  # two arrivals, two guest cohorts
    assert set(c.guests) == {("b00",), ("b01",)}
    assert c.plan(names(4) + ["b01"]) == [tuple(names(4)), ("b01",)] and c.guests == {}


def test_settling_with_no_room_deals_the_guests_among_themselves():
    c, clock = cohorts(size=2, join_wait_s=5.0)
    c.plan(names(4))
    for i in range(3):
        c.plan(names(4) + names(i + 1, "b"))
    assert len(c.guests) == 3
    clock.t += 5.0
    assert c.plan(names(4) + names(3, "b")) == [("a00", "a01"), ("a02", "a03"), ("b00", "b01"), ("b02",)]


def test_size_zero_is_one_group_for_all_with_guests_until_the_next_rebuild():
    c, clock = cohorts(size=0, join_wait_s=5.0)
    assert c.plan(names(3)) == [tuple(names(3))]
    assert c.plan(names(4)) == [tuple(names(3)), ("a03",)]  # the arrival does not rebuild the fleet's group
    clock.t += 1.0
    assert c.plan(["a00", "a02", "a03"]) == [("a00", "a02", "a03")]  # a death: one rebuild takes the guest too
    assert c.plan(["a00", "a02", "a03", "a04"]) == [("a00", "a02", "a03"), ("a04",)]
    clock.t += 5.0
    assert c.plan(["a00", "a02", "a03", "a04"]) == [("a00", "a02", "a03", "a04")]


def test_join_wait_zero_settles_every_arrival_at_once():
    c, _ = cohorts(size=4, join_wait_s=0.0)
    c.plan(names(3))
    assert c.plan(names(4)) == [tuple(names(4))] and c.guests == {}


def test_everyone_leaving_leaves_no_cohort():
    c, _ = cohorts(size=4)
    c.plan(names(6))
    assert c.plan([]) == [] and c.current == []
    assert c.plan(["b00"]) == [("b00",)] and c.guests == {}  # a fleet with no members: dealt at once


@pytest.mark.parametrize("kw", [dict(size=-1, join_wait_s=1.0), dict(size=2.5, join_wait_s=1.0),
                                dict(size=2, join_wait_s=-1.0)])
def test_bad_cohort_settings_are_refused(kw):
    with pytest.raises(ValueError, match="cohort size|join_wait_s"):
        Cohorts(**kw)
