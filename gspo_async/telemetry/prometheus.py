"""Prometheus text exposition (format 0.0.4) of a registry, served by a stdlib HTTP thread.

Mapping (contract): ``gspo_`` + the name with dots and slashes turned into underscores.
- gauges and counters: one sample, ``gspo_train_loss 0.41``;
- histogram-lists: one sample per bin, labelled by the bin (``lag="2"`` or ``length="64-127"``), typed counter
  because the counts are cumulative;
- per-actor metrics: one family per suffix, labelled by actor, ``gspo_actor_tokens_per_s{actor="a1"} 812``.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from gspo_async.telemetry.names import COUNTER, HIST, bin_label, lookup, prometheus_name, split_actor_name

if TYPE_CHECKING:
    from gspo_async.telemetry.registry import MetricRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render(values: dict[str, float | list[float]]) -> str:
    """Prometheus text of a snapshot; families sorted by name, each with HELP and TYPE."""
    families: dict[str, tuple[str, str, list[str]]] = {}  # prom name -> (type, help, sample lines)
    for name in sorted(values):
        spec = lookup(name)
        prom = prometheus_name(name)
        ptype = "counter" if spec.kind in (COUNTER, HIST) else "gauge"
        unit = f" ({spec.unit})" if spec.unit else ""
        _, _, lines = families.setdefault(prom, (ptype, spec.description + unit, []))
        value = values[name]
        actor = split_actor_name(name)
        if spec.kind == HIST:
            for i, count in enumerate(value):  # type: ignore[arg-type]
                lines.append(f'{prom}{{{spec.bins}="{_label(bin_label(spec, i))}"}} {_number(count)}')
        elif actor is not None:
            lines.append(f'{prom}{{actor="{_label(actor[0])}"}} {_number(value)}')  # type: ignore[arg-type]
        else:
            lines.append(f"{prom} {_number(value)}")  # type: ignore[arg-type]
    out: list[str] = []
    for prom in sorted(families):
        ptype, help_text, lines = families[prom]
        out.append(f"# HELP {prom} {_escape_help(help_text)}")
        out.append(f"# TYPE {prom} {ptype}")
        out.extend(lines)
    return "\n".join(out) + "\n"


class PrometheusServer:
    """``GET /metrics`` (also ``/``) answers the registry's current values; runs on a daemon thread."""

    def __init__(self, registry: "MetricRegistry", host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "Prometheus metrics are at /metrics")
                    return
                body = render(registry.snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep stderr quiet
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise OSError(f"cannot serve Prometheus metrics on {host}:{port}: {err}. Pick a free port "
                          "(telemetry.prometheus_port, 0 = any free port)") from err
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="prometheus",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
