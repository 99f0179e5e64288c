"""A receiving actor in its own process, driven by the weight-sync tests.

Usage: python receiver_proc.py HOST PORT ACTOR_ID TIMEOUT_S
Prints one JSON object per line: {"event": "started"} once subscribed, then per round it was a member of
{"event": "received", "version", "seq", "gen", "checksum"} or {"event": "failed"}, and
{"event": "closed"} when the learner's store goes away.
"""

import json
import sys

import torch

from gspo_async.weights.elastic import WeightSubscriber


def say(**event) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    torch.set_num_threads(1)
    host, port, actor_id, timeout_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    subscriber = WeightSubscriber(host, port, actor_id, timeout_s=timeout_s)
    say(event="started")
    try:
        while True:
            got = subscriber.receive()
            if got is None:
                say(event="failed")
            else:
                say(event="received", version=got.version, seq=got.seq, gen=got.gen, checksum=got.checksum)
    except ConnectionError:
        say(event="closed")
    finally:
        subscriber.close(timeout_s=1.0)


if __name__ == "__main__":
    main()
