"""The live dashboard: a stdlib HTTP server for one run directory.

Routes:
  /                       the page (static/index.html); its script and style come from static/, never a CDN
  /static/<file>          charts.js, actor_table.js, dashboard.js, dashboard.css
  /api/metrics?since=N    records of <run_dir>/metrics.jsonl from byte offset N on:
                          {"records": [...], "offset": next N, "size": file bytes, "reset": bool, "more": bool,
                           "now": server unix time}
                          reset: the file is shorter than N (a new run replaced it) and records start from 0
  /api/summary            counts, drops by reason, rates, busy fractions, bottleneck, run state and events of the
                          whole file (dashboard/summary.py), read incrementally
  /api/info               {"run": name, "run_dir": path, "file": metrics path, "exists": bool}
  /healthz                "ok"

The page polls /api/metrics with the last offset, so a running learner's records appear without reloading and
a finished run's file is read the same way.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from gspo_async.dashboard.summary import RunDigest
from gspo_async.telemetry.registry import METRICS_FILENAME, read_metrics_from

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
DEFAULT_MAX_BYTES = 4 << 20  # per /api/metrics answer; the page asks again at once while "more" is true


class DashboardServer:
    """Serves the dashboard of `run_dir` from a daemon thread. ``.url`` is the page; ``.close()`` stops it."""

    def __init__(self, run_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 filename: str = METRICS_FILENAME, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise ValueError(f"run directory {self.run_dir} does not exist: pass the directory the learner writes "
                             f"(it holds {filename}; the learner creates it at start)")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.metrics_path = self.run_dir / filename
        self.max_bytes = max_bytes
        self._digest, self._digest_offset = RunDigest(), 0
        self._digest_lock = threading.Lock()
        handler = _make_handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise OSError(f"cannot serve the dashboard on {host}:{port}: {err}. Pick another port "
                          "(--port, or telemetry.dashboard_port; 0 = any free port)") from err
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="dashboard",
                                        daemon=True)
        self._thread.start()

    def metrics_since(self, offset: int) -> dict:
        """The /api/metrics answer for byte `offset`."""
        if not self.metrics_path.exists():
            return {"records": [], "offset": 0, "size": 0, "reset": offset > 0, "more": False, "now": time.time()}
        size = self.metrics_path.stat().st_size
        reset = offset > size
        if reset:
            offset = 0
        records, new_offset = read_metrics_from(self.metrics_path, offset, self.max_bytes)
        return {"records": records, "offset": new_offset, "size": size, "reset": reset,
                "more": size - new_offset > 0 and new_offset > offset, "now": time.time()}

    def summary(self) -> dict:
        """The /api/summary answer: the digest of every record so far (new lines are read on each call)."""
        with self._digest_lock:
            if self.metrics_path.exists():
                size = self.metrics_path.stat().st_size
                if size < self._digest_offset:  # a new run replaced the file
                    self._digest, self._digest_offset = RunDigest(), 0
                while self._digest_offset < size:
                    records, end = read_metrics_from(self.metrics_path, self._digest_offset, self.max_bytes)
                    if end == self._digest_offset:
                        break  # only a line still being written
                    self._digest.feed(records)
                    self._digest_offset = end
            return self._digest.summary(time.time())

    def info(self) -> dict:
        return {"run": self.run_dir.resolve().name, "run_dir": str(self.run_dir.resolve()),
                "file": str(self.metrics_path), "exists": self.metrics_path.exists()}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_handler(dashboard: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, payload: dict, code: int = 200) -> None:
            self._send(code, json.dumps(payload, allow_nan=False).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            url = urlparse(self.path)
            if url.path == "/api/metrics":
                raw = parse_qs(url.query).get("since", ["0"])[0]
                try:
                    since = int(raw)
                    if since < 0:
                        raise ValueError
                except ValueError:
                    self._json({"error": f"since must be a byte offset >= 0, got {raw!r}"}, 400)
                    return
                self._json(dashboard.metrics_since(since))
            elif url.path == "/api/summary":
                self._json(dashboard.summary())
            elif url.path == "/api/info":
                self._json(dashboard.info())
            elif url.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif url.path in ("/", "/index.html") or url.path.startswith("/static/"):
                name = "index.html" if url.path in ("/", "/index.html") else url.path[len("/static/"):]
                path = STATIC_DIR / name
                # Only plain files directly in static/: no "..", no sub-paths.
                if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in STATIC_TYPES:
                    self._send(404, b"not found\n", "text/plain")
                    return
                self._send(200, path.read_bytes(), STATIC_TYPES[path.suffix])
            else:
                self._send(404, b"not found\n", "text/plain")

        def log_message(self, *args: object) -> None:  # the page polls every two seconds: keep stderr quiet
            pass

    return Handler


def serve_dashboard(run_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> DashboardServer:
    """Start the dashboard of `run_dir` on a background thread and return it (``.url``, ``.close()``)."""
    return DashboardServer(run_dir, host, port)


def free_port_near(port: int, host: str = "127.0.0.1", tries: int = 20) -> int | None:
    """The first port after `port` that `host` can bind now (a suggestion; another process may take it first)."""
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        with socket.socket() as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return candidate
    return None


def main(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8265, stop: threading.Event | None = None,
         poll_s: float = 1.0) -> int:
    """Serve the dashboard until Ctrl-C, SIGTERM or `stop` (``gspo-async dashboard RUN_DIR``). Returns the exit code.

    A run directory that does not exist yet is waited for (the learner creates it at start), with a message; a
    port in use is an error that suggests a free one.
    """
    stop = stop or threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
    server = None
    try:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            if run_dir.exists():
                print(f"{run_dir} is a file, not a run directory: pass the directory the learner writes (run_dir in "
                      f"the config; it holds {METRICS_FILENAME})", flush=True)
                return 2
            print(f"waiting for {run_dir} to appear (the learner creates it when it starts; Ctrl-C to stop) ...",
                  flush=True)
            while not run_dir.is_dir():
                if stop.wait(poll_s):
                    return 0
        try:
            server = serve_dashboard(run_dir, host, port)
        except OSError as err:
            if getattr(err.__cause__, "errno", None) != errno.EADDRINUSE:
                raise
            other = free_port_near(port, host)
            hint = f": try --port {other}" if other is not None else ": pick another with --port"
            print(f"port {port} on {host} is in use (another dashboard or service){hint} (--port 0 picks any "
                  "free port)", flush=True)
            return 2
        print(f"dashboard of {server.run_dir} at {server.url} (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.close()
    return 0
