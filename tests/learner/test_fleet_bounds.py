"""Per-actor metric rows are bounded in number, and one actor's bad numbers cost only its own row; a run that drops
most groups as stale is told so."""

import json

from gspo_async.learner.coordinator import Coordinator
from gspo_async.learner.endpoint import LearnerServer
from gspo_async.learner.fleet import MAX_ACTOR_ROWS, FleetMetrics, StaleDropWatch
from gspo_async.learner.prompts import PromptSource
from gspo_async.protocol.messages import Limits
from gspo_async.telemetry.registry import MetricRegistry


def make(tmp_path, n_actors):
    coord = Coordinator(PromptSource([(i, [1, 2], str(i)) for i in range(10)]), groups_per_step=2, group_size=2,
                        max_staleness=1, lease_timeout_s=30.0, heartbeat_timeout_s=5.0)
    server = LearnerServer(coord, limits=Limits(64, 16, 16, 2))  # not started: collect reads the coordinator
    for i in range(n_actors):
        coord.register(f"a{i}", f"i{i}", "hf")
    registry = MetricRegistry("learner", tmp_path)
    return coord, FleetMetrics(server, registry), registry


def actor_names(record):
    return {k.split("/")[1] for k in record if k.startswith("actor/")}


def test_rows_are_capped_and_the_fleet_numbers_count_everyone(tmp_path):
    coord, fleet, registry = make(tmp_path, MAX_ACTOR_ROWS + 40)
    for i in range(MAX_ACTOR_ROWS + 40):
        coord.heartbeat(f"a{i}", 0, {"tokens_per_s": 1.0})
    out = fleet.collect(0)
    record = registry.log(0)
    assert len(actor_names(record)) == MAX_ACTOR_ROWS and fleet.actors_without_rows == 40
    assert out["throughput/gen_tokens_per_s"] == MAX_ACTOR_ROWS + 40  # every actor counted, rows or not
    first = actor_names(record)
    coord.register("late", "il", "hf")  # a newcomer does not displace an actor that has a row
    fleet.collect(0)
    assert actor_names(registry.log(1)) == first
    registry.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(len(actor_names(json.loads(line))) == MAX_ACTOR_ROWS for line in lines)


def test_a_bad_stat_costs_only_that_actors_row(tmp_path):
    coord, fleet, registry = make(tmp_path, 2)
    coord.heartbeat("a0", 0, {"tokens_per_s": 5.0, "busy_frac": "not a number"})
    coord.heartbeat("a1", 0, {"tokens_per_s": 7.0, "busy_frac": 0.5})
    out = fleet.collect(0)
    record = registry.log(0)
    assert actor_names(record) == {"a1"} and record["actor/a1/busy_frac"] == 0.5
    assert fleet.actor_row_errors == 1 and out["throughput/gen_tokens_per_s"] == 12.0
    registry.close()


def test_stale_drop_watch_warns_once_per_window_when_most_groups_are_dropped():
    watch = StaleDropWatch(max_staleness=2, window=4, share=0.5)
    trained = stale = 0.0
    said = []
    for step in range(12):  # 16 trained per step; from step 4 on, 20 stale per step (20 / 36 > 0.5)
        trained += 16
        stale += 20 if step >= 4 else 0
        said.append(watch.observe(trained, stale))
    warned = [i for i, w in enumerate(said) if w]
    # At step i the window is steps i-3..i; with k stale steps in it the stale share is 20k / (64 + 20k): 60/124 at
    # k = 3, 80/144 at k = 4 (step 7). Then quiet for 4 steps: the next warning is at step 11.
    assert warned == [7, 11]
    assert "80 of the 144 groups" in said[7] and "max_staleness=2" in said[7]


def test_stale_drop_watch_is_quiet_at_half_or_less():
    watch = StaleDropWatch(max_staleness=1, window=3, share=0.5)
    assert not any(watch.observe(16.0 * i, 16.0 * i) for i in range(1, 20))  # exactly half: not "most"
