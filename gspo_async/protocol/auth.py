"""CurveZMQ keys and the bind policy: loopback by default, anything else needs keys or an explicit insecure flag.

Key files are ZeroMQ certificate files (zmq.auth format, Z85 text). `generate_keys(DIR)` writes

    DIR/server.key, DIR/server.key_secret                the learner's key pair
    DIR/client0.key, DIR/client0.key_secret, ...         one pair per actor (or per group of actors)
    DIR/authorized_clients/client0.key, ...              the client public keys the learner accepts

The learner needs server.key_secret and authorized_clients/; an actor needs its clientN.key_secret and
server.key. A client whose public key is not in authorized_clients/ is refused during the handshake.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CurveServerKeys:
    """The learner's key pair (Z85 bytes) and the Z85 public keys of the clients it accepts."""

    public: bytes
    secret: bytes
    authorized: frozenset[bytes]

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike, authorized_clients: Optional[str | os.PathLike] = None
             ) -> "CurveServerKeys":
        """From a secret key file and a directory of authorised public key files (default: authorized_clients/
        next to the secret key file)."""
        public, secret = _load_pair(secret_key_file)
        folder = Path(authorized_clients) if authorized_clients else Path(secret_key_file).parent / "authorized_clients"
        if not folder.is_dir():
            raise FileNotFoundError(f"authorized clients directory {folder} does not exist: create it with "
                                    "`gspo-async keys DIR` or point learner.curve.authorized_clients at it")
        keys = frozenset(zmq.auth.load_certificate(p)[0] for p in sorted(folder.glob("*.key")))
        if not keys:
            raise ValueError(f"{folder} holds no *.key public key files: no actor could connect")
        return cls(public, secret, keys)


@dataclass(frozen=True)
class CurveClientKeys:
    """An actor's key pair and the learner's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike, server_public_key_file: Optional[str | os.PathLike] = None
             ) -> "CurveClientKeys":
        """From the actor's secret key file and the server's public key file (default: server.key next to it)."""
        public, secret = _load_pair(secret_key_file)
        server_file = Path(server_public_key_file) if server_public_key_file else \
            Path(secret_key_file).parent / "server.key"
        if not server_file.is_file():
            raise FileNotFoundError(f"server public key {server_file} not found: copy server.key from the "
                                    "learner's key directory and set actor.curve.server_public_key")
        return cls(public, secret, zmq.auth.load_certificate(server_file)[0])


def _load_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"key file {path} not found: create keys with `gspo-async keys DIR`")
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key: pass the *.key_secret file, not the public *.key file")
    return public, secret


def generate_keys(directory: str | os.PathLike, clients: int = 1) -> list[Path]:
    """Write a server key pair and `clients` client key pairs into `directory` (see the module doc).
    Existing key files are never overwritten. Returns the paths written."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support; install pyzmq wheels (they include it)")
    if clients < 1:
        raise ValueError(f"clients={clients}: generate at least one client key pair")
    root = Path(directory)
    names = ["server"] + [f"client{i}" for i in range(clients)]
    taken = [root / f"{n}.key_secret" for n in names if (root / f"{n}.key_secret").exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: keys are never overwritten; use another directory")
    root.mkdir(parents=True, exist_ok=True)
    authorized = root / "authorized_clients"
    authorized.mkdir(exist_ok=True)
    written = []
    for name in names:
        public_file, secret_file = zmq.auth.create_certificates(root, name)
        os.chmod(secret_file, 0o600)
        written += [Path(public_file), Path(secret_file)]
        if name != "server":
            written.append(Path(shutil.copy(public_file, authorized / Path(public_file).name)))
    return written


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; a wildcard or any other address is not loopback."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_bind(host: str, curve: Optional[CurveServerKeys], insecure: bool) -> None:
    """Refuse an unauthenticated bind on a non-loopback address unless `insecure` is set."""
    if not is_loopback(host) and curve is None and not insecure:
        raise ValueError(
            f"refusing to bind the learner to {host!r} without authentication: anyone who can reach it could "
            "register as an actor. Create keys with `gspo-async keys DIR` and set learner.curve.secret_key "
            "(and actor.curve.* on each actor), or bind 127.0.0.1, or set learner.insecure: true on a trusted "
            "network")


class _KeySet:
    """ZAP credentials callback: accept exactly the authorised client public keys."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(context: zmq.Context, keys: CurveServerKeys) -> ThreadAuthenticator:
    """A ZAP handler on `context` that admits only `keys.authorized` clients (stop it before closing)."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_KeySet(keys.authorized))
    return auth


def apply_server_keys(sock: zmq.Socket, keys: CurveServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def apply_client_keys(sock: zmq.Socket, keys: CurveClientKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public
