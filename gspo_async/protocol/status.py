"""`gspo-async status HOST:PORT`: ask a running learner for its fleet and print it.

A status query is not an actor: it sends one `status_request` on a socket of its own (no register, no heartbeat,
no lease), so the learner's membership stays as it is. Against a CURVE learner it needs a client key the learner
authorises, exactly like an actor (`key`: a client *.key_secret file; `server_key`: the learner's server.key).
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from gspo_async.protocol.auth import CurveClientKeys, apply_client_keys
from gspo_async.protocol.client import LearnerUnavailable, RegistrationRefused
from gspo_async.protocol.codec import decode_from_learner, encode
from gspo_async.protocol.messages import ErrorReply, ProtocolError, StatusReply, StatusRequest
from gspo_async.protocol.sockets import HANDSHAKE_EVENTS, endpoint, parse_address

STATUS_RID = 1


def query_status(address: str, timeout_s: float = 5.0, curve: Optional[CurveClientKeys] = None) -> StatusReply:
    """The learner's StatusReply. Raises LearnerUnavailable (no answer within `timeout_s` seconds),
    RegistrationRefused (the CURVE handshake failed) or ProtocolError (the learner answered with an error)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    host, port = parse_address(address)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        if curve is not None:
            apply_client_keys(sock, curve)
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        sock.connect(endpoint(host, port))
        sock.send_multipart(encode(StatusRequest(rid=STATUS_RID)))  # queued until the connection is up
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(remaining * 1000))
            if monitor in events:
                _check_handshake(monitor, address, curve is not None)
            if sock in events:
                reply = decode_from_learner(sock.recv_multipart())
                if isinstance(reply, ErrorReply):
                    raise ProtocolError(reply.code, f"the learner refused the status query: {reply.message}")
                if isinstance(reply, StatusReply) and reply.rid == STATUS_RID:
                    return reply
        raise LearnerUnavailable(
            f"no learner answered at {host}:{port} within {timeout_s:g} s: check that the learner is running and "
            "the address (its learner.port, not the weight store's port+1) is right; a CURVE learner needs "
            "--key and --server-key")
    finally:
        ctx.destroy(linger=0)


def _check_handshake(monitor: zmq.Socket, address: str, with_key: bool) -> None:
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        kind = event["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            continue
        if not with_key:  # libzmq reports this case under several event kinds
            reason = "the learner requires CURVE keys: pass --key (a client *.key_secret) and --server-key"
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason = "the learner refused this client key (its public key is not in the learner's authorized_clients)"
        else:
            reason = ("the security handshake failed: wrong --server-key, or the learner does not use CURVE (a "
                      "loopback learner without learner.curve.secret_key needs no key)")
        raise RegistrationRefused(f"{reason}; learner {address}")


def format_status(reply: StatusReply, address: str = "") -> str:
    """The fleet as text: one header block, the accounting line and one row per actor (times in seconds)."""
    a, c = reply.accounting, reply.counters
    lines = [
        f"learner {address}  session {reply.session}  version {reply.version}",
        f"buffered groups {c.get('buffered', a.get('buffered', 0))} | in-flight leases "
        f"{c.get('in_flight', a.get('in_flight', 0))} | training {a.get('training', 0)} | pending re-issue "
        f"{a.get('pending_reissue', 0)} | capacity {c.get('capacity', '?')}",
        f"prompts: issued {a.get('issued', 0)} / trained {a.get('trained', 0)} / dropped {a.get('dropped', 0)} / "
        f"in flight {a.get('in_flight', 0)} (+ buffered {a.get('buffered', 0)}, training {a.get('training', 0)}, "
        f"pending re-issue {a.get('pending_reissue', 0)}) "
        f"{'balanced' if a.get('balanced') else 'NOT BALANCED'}",
        f"groups: received {c.get('groups_received', 0)} / accepted {c.get('groups_accepted', 0)} / trained "
        f"{c.get('groups_trained', 0)} / dropped {c.get('groups_dropped', 0)} / duplicate "
        f"{c.get('groups_duplicate', 0)} / rejected {c.get('groups_rejected', 0)}",
        f"actors: {len(reply.actors)} live ({c.get('actors_registered', 0)} registered, {c.get('actors_left', 0)} "
        f"left, {c.get('actors_dead', 0)} declared dead)",
    ]
    if reply.actors:
        header = ("actor", "engine", "version", "tokens/s", "leases", "last contact", "address")
        rows = [(r.actor_id, r.engine, str(r.version), f"{r.tokens_per_s:.1f}", str(r.leases),
                 f"{r.last_contact_s:.1f}s ago", r.address or "-")
                for r in sorted(reply.actors, key=lambda r: r.actor_id)]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def print_status(address: str, timeout_s: float = 5.0, key: Optional[str] = None,
                 server_key: Optional[str] = None) -> int:
    """Print the fleet of the learner at `address`; the exit code: 0 answered, 1 no answer / refused, 2 bad
    arguments. key: client secret key file (CURVE); server_key: the learner's public key file (default: server.key
    next to `key`)."""
    try:
        if server_key and not key:
            raise ValueError("--server-key needs --key (the client secret key file) as well")
        curve = CurveClientKeys.load(key, server_key) if key else None
        reply = query_status(address, timeout_s, curve)
    except (ProtocolError, LearnerUnavailable, RegistrationRefused) as err:  # the learner's side
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:  # our arguments
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_status(reply, address))
    return 0
