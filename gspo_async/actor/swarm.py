"""Many simulated actors in one process: threads, each the real actor loop with ``actor.engine=simulated``.

For load tests and benchmarks that need tens of actors on a small machine (one process per actor would not fit in
memory). Every thread is an `Actor` exactly as ``gspo-async actor --learner ADDR --id ID engine=simulated`` runs it:
its own ActorClient (socket, heartbeats, resends), weight receiver and lease loop; only generation is simulated
(engines/simulated.py).

    python -m gspo_async.actor.swarm --learner HOST:PORT --ids a0,a1,a2 [--simulated JSON] [--ack-log FILE]

--ack-log appends one line per final acknowledgement, ``<actor id> <group id> <status>``, so a test can check that
every group the learner acknowledged as accepted ends in its ledger. SIGTERM/SIGINT stop every actor gracefully.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional


def run_swarm(learner: str, actor_ids: list[str], simulated: dict[str, Any], ack_log: Optional[Path] = None,
              stop: Optional[threading.Event] = None) -> int:
    """Run one simulated actor per id as threads of this process until `stop` is set (or every actor ended)."""
    from gspo_async.engines.simulated import SimulationSettings
    from gspo_async.actor.main import Actor

    settings = SimulationSettings.from_mapping(simulated)  # checked once here, not in every thread
    overrides = ["engine=simulated", f"simulated={json.dumps(settings.to_dict())}"]
    # Import what the actor loop imports lazily, once, here: transformers' lazy imports are not thread-safe.
    import gspo_async.engines.factory  # noqa: F401
    import gspo_async.engines.simulated  # noqa: F401
    import gspo_async.tasks.scoring  # noqa: F401
    import gspo_async.tasks  # noqa: F401
    import gspo_async.weights  # noqa: F401
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    stop = stop or threading.Event()
    log_lock = threading.Lock()
    log_file = open(ack_log, "a", encoding="utf-8") if ack_log is not None else None

    def recorder(actor_id: str):
        def on_ack(group_id: str, status: str) -> None:
            with log_lock:
                log_file.write(f"{actor_id} {group_id} {status}\n")
                log_file.flush()
        return on_ack

    actors = [Actor(learner, actor_id, overrides, None, None) for actor_id in actor_ids]
    if log_file is not None:
        for actor in actors:
            actor.client.on_ack = recorder(actor.actor_id)

    def run(actor: Actor) -> None:
        try:
            actor.run()
        except Exception as err:  # one actor failing must not take the others down
            print(f"[swarm {actor.actor_id}] stopped with {type(err).__name__}: {err}", flush=True)

    threads = [threading.Thread(target=run, args=(a,), name=a.actor_id, daemon=True) for a in actors]
    for t in threads:
        t.start()
    while not stop.wait(0.5) and any(t.is_alive() for t in threads):
        pass
    for a in actors:
        a.stop.event.set()
    deadline = time.monotonic() + 40
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.1))
    for a in actors:
        try:
            a.close()
        except Exception as err:  # closing must not hide the run's result
            print(f"[swarm {a.actor_id}] error while closing: {err}", flush=True)
    if log_file is not None:
        with log_lock:
            log_file.close()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from gspo_async.process import setup_process

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learner", required=True, help="HOST:PORT of the learner")
    ap.add_argument("--ids", required=True, help="comma-separated actor ids, one thread each")
    ap.add_argument("--simulated", default="{}", help="SimulationSettings fields as JSON (engines/simulated.py)")
    ap.add_argument("--ack-log", type=Path, help="append '<actor> <group> <status>' per final ack to this file")
    args = ap.parse_args(argv)
    setup_process(1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_swarm(args.learner, [i for i in args.ids.split(",") if i], json.loads(args.simulated), args.ack_log,
                     stop)


if __name__ == "__main__":
    raise SystemExit(main())
