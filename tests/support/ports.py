"""Free loopback ports for processes that bind them later.

A port found free by binding port 0 comes from the kernel's ephemeral range, where every outgoing connection also
takes its local port: on a busy machine (a parallel suite opens thousands of loopback connections) one of them can
take the port in the seconds before the process meant to listen on it starts, which then fails to bind. So the ports
handed out here lie below that range, and each pytest-xdist worker draws from its own slice: no connection and no
other worker's test can take them meanwhile.
"""

from __future__ import annotations

import os
import random
import socket

LOWEST = 10000
_given: set[int] = set()  # this process never hands out the same port twice
_draw = random.SystemRandom()  # independent of tests that seed `random`


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default lower bound


def worker_slice() -> range:
    """This worker's ports: an equal share of [LOWEST, ephemeral low) per xdist worker (all of it without xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    span = (_ephemeral_low() - LOWEST) // count
    if span < 16:
        raise RuntimeError(f"the ephemeral port range starts at {_ephemeral_low()}: too few ports below it for "
                           f"{count} workers; lower LOWEST in tests/support/ports.py")
    start = LOWEST + (index % count) * span
    return range(start, start + span)


def free_port() -> int:
    """A loopback port nobody listens on now, outside the ephemeral range, not handed out before here."""
    ports = worker_slice()
    for _ in range(200):
        port = _draw.choice(ports)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or in TIME_WAIT from an earlier test
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port found in {ports.start}-{ports.stop - 1} after 200 tries")
