"""The test suite's port picker: ports below the ephemeral range, a disjoint slice per xdist worker, no repeats."""

from __future__ import annotations

import socket

from tests.support import ports


def test_worker_slices_are_disjoint_and_below_the_ephemeral_range(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(ports.worker_slice()))
    assert not (slices[0] & slices[1]) and not (slices[1] & slices[2]) and not (slices[0] & slices[2])
    everything = set().union(*slices)
    assert min(everything) >= ports.LOWEST and max(everything) < ports._ephemeral_low()


def test_free_ports_are_bindable_and_never_handed_out_twice():
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50
    assert all(p in ports.worker_slice() for p in given)
    with socket.socket() as s:  # free now: a process can bind it
        s.bind(("127.0.0.1", given[-1]))
