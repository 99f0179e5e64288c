"""Stand-alone process groups (gloo or NCCL) built on a shared store, and bounded waits on their work.

The groups are never registered as torch.distributed's default group, so the learner keeps that one
free (DeepSpeed uses it), and a group can be thrown away (`abort`) and rebuilt under a new store
prefix whenever the set of actors changes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
NCCL_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"


def check_backend(backend: str, device: torch.device | str) -> torch.device:
    """Validate a (backend, device) pair and return the device; NCCL needs CUDA, gloo uses the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "gloo" and device.type != "cpu":
        raise ValueError(f"the gloo backend stages weights on the CPU; pass device='cpu', not {device}")
    if backend == "nccl":
        if device.type != "cuda":
            raise ValueError(f"the nccl backend needs a CUDA device such as 'cuda:0', got {device}")
        if getattr(dist, "ProcessGroupNCCL", None) is None or not torch.cuda.is_available():
            raise RuntimeError("backend='nccl' needs a CUDA build of torch and a visible GPU; use backend='gloo'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def make_group(backend: str, store: dist.Store, rank: int, size: int, timeout_s: float,
               device: torch.device, bind_host: str | None = None) -> dist.ProcessGroup:
    """Build a group of `size` ranks over `store` (usually a PrefixStore unique to one generation).

    Blocks until every rank has joined or `timeout_s` passed (then raises DistStoreError).
    `bind_host` is the address gloo listens on; None lets gloo pick from the hostname
    (GLOO_SOCKET_IFNAME overrides).
    """
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        gloo = dist.ProcessGroupGloo
        opts._devices = [gloo.create_device(hostname=bind_host) if bind_host else gloo.create_default_device()]
        return gloo(store, rank, size, opts)
    # NCCL (not exercised on CPU-only machines): the same store/prefix rendezvous; connect eagerly so
    # that a missing peer shows up here rather than inside the first broadcast. The constructor reads
    # TORCH_NCCL_ASYNC_ERROR_HANDLING; its default lets the watchdog kill the process on a timed-out
    # collective, so this group alone gets 2 (abort the communicator, keep the process): a dead actor
    # must cost one failed round, not the learner.
    torch.cuda.set_device(device)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    previous = os.environ.get(NCCL_ERROR_HANDLING)
    os.environ[NCCL_ERROR_HANDLING] = "2"
    try:
        group = dist.ProcessGroupNCCL(store, rank, size, opts)
    finally:
        if previous is None:
            os.environ.pop(NCCL_ERROR_HANDLING)
        else:
            os.environ[NCCL_ERROR_HANDLING] = previous
    group.eager_connect_single_device(device)
    return group


def broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> dist.Work:
    """Start an asynchronous broadcast of `tensor` from rank 0 of `group`."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    return group.broadcast([tensor], opts)


def wait_work(work: dist.Work, timeout_s: float, backend: str) -> None:
    """Wait for `work` at most `timeout_s` seconds; raise TimeoutError or the transport's error.

    gloo honours the timeout in `wait`. NCCL's `wait` only orders CUDA streams, so completion is
    polled instead, which keeps the bound on the host side too.
    """
    if backend == "gloo":
        work.wait(timedelta(seconds=max(timeout_s, 1e-3)))
        return
    deadline = time.monotonic() + timeout_s
    while not work.is_completed():
        if time.monotonic() > deadline:
            raise TimeoutError(f"NCCL broadcast did not complete within {timeout_s:.1f}s")
        time.sleep(1e-3)
    work.wait()  # re-raises an error the collective ended with


def abort_group(group: dist.ProcessGroup | None) -> None:
    """Abort `group` so that peers blocked in one of its collectives fail instead of waiting."""
    if group is None:
        return
    try:
        group.abort()
    except RuntimeError:
        pass  # already broken: nothing left to unblock


class GroupFormation:
    """`make_group` on a thread of its own, with a store client of its own, so that its caller can give up on it.

    A rendezvous blocks until every rank has joined or the group's timeout passed; a rank that died meanwhile
    (SIGKILL between "ready" and its own rendezvous) holds every other rank for that timeout. A formation lets the
    caller wait in short steps and stop waiting the moment it knows the group can no longer form (a member is
    gone, the round was called off): `wait(until_abandoned)`. The abandoned thread still ends by itself within the
    timeout (or at once when the store's server goes away); a group it forms too late is aborted. `join` waits
    for that end: call it before the process exits (a thread blocked in the rendezvous at interpreter exit
    aborts the process).

    Args:
        host, port: the store's server (the learner's TCPStore); the formation opens its own client to it.
        prefix: the generation's store prefix ("pg/<gen>").
        rank, size, timeout_s, device, bind_host: as for `make_group` (timeout in seconds).
    """

    def __init__(self, backend: str, host: str, port: int, prefix: str, rank: int, size: int, timeout_s: float,
                 device: torch.device, bind_host: str | None = None):
        self._args = (backend, rank, size, timeout_s, device, bind_host)
        self._host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host in ("::", "[::]") else host
        self._port, self._prefix, self.timeout_s = port, prefix, timeout_s
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self.group: dist.ProcessGroup | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"group-formation-{prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backend, rank, size, timeout_s, device, bind_host = self._args
        group = None
        try:
            client = dist.TCPStore(self._host, self._port, None, False, timedelta(seconds=timeout_s))
            group = make_group(backend, dist.PrefixStore(self._prefix, client), rank, size, timeout_s, device,
                               bind_host)
        except Exception as err:  # DistStoreError (timeout), DistNetworkError (store gone), gloo/NCCL errors
            self.error = err
        with self._lock:
            if self._abandoned:
                abort_group(group)  # formed (or failed) after its caller gave up: nobody will use it
            else:
                self.group = group
            self._done.set()

    def wait(self, until_abandoned: Callable[[], str | None], poll_s: float = 0.02) -> dist.ProcessGroup:
        """The formed group. Every `poll_s` seconds `until_abandoned()` is asked; when it returns a reason (a
        non-empty string) the formation is abandoned and `GroupAbandoned` raised with it. A failed rendezvous
        raises its own error (a RuntimeError such as DistStoreError at the timeout)."""
        while not self._done.wait(poll_s):
            reason = until_abandoned()
            if reason:
                with self._lock:
                    if not self._done.is_set():
                        self._abandoned = True
                        raise GroupAbandoned(reason)
        if self.error is not None:
            raise self.error
        return self.group

    def join(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` seconds for the thread to end; returns whether it did."""
        self._thread.join(max(timeout_s, 0.0))
        return not self._thread.is_alive()


class GroupAbandoned(Exception):
    """A group formation given up by its caller (the reason is the message)."""


def join_formations(formations: list[GroupFormation], timeout_s: float) -> list[GroupFormation]:
    """Join abandoned formations, all within `timeout_s` seconds; returns those still running (logged)."""
    deadline = time.monotonic() + timeout_s
    left = [f for f in formations if not f.join(deadline - time.monotonic())]
    if left:
        log.warning("%d abandoned weight-sync group formation(s) still wait for their rendezvous timeout",
                    len(left))
    return left


def listen_socket(host: str, port: int) -> tuple[int, int]:
    """(fd, port): a socket listening on exactly `host` (a wildcard such as 0.0.0.0 or :: only when `host` is
    one; port 0 picks a free port), its descriptor for TCPStore's `master_listen_fd`, which takes it over.
    Without it the store's server listens on every interface whatever host it is given: an unauthenticated door
    next to a loopback-only learner."""
    name = "127.0.0.1" if host == "localhost" else host.strip("[]")
    infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
        port = sock.getsockname()[1]
    except OSError as err:
        sock.close()
        raise OSError(f"the weight store cannot listen on {host}:{port} ({err}); free the port or set "
                      "weight_store_port") from None
    return sock.detach(), port


def default_bind(host: str, bind_host: str | None) -> str | None:
    """The address a group's sockets bind: `bind_host`, or loopback for a loopback store, else any."""
    return bind_host if bind_host is not None else ("127.0.0.1" if host in LOOPBACK_HOSTS else None)
