"""Prometheus export of a registry through ``prometheus-client``: a custom collector over the registry's snapshot.

Mapping (contract, names from `names.prometheus_name`):
- gauges: ``gspo_train_loss 0.41``;
- counters: ``gspo_staleness_dropped_total 24`` (prometheus-client adds the ``_total`` suffix counters carry);
- histogram-lists: real Prometheus histograms, cumulative ``le`` buckets plus ``_count`` (and ``_sum`` where the
  bins give it exactly), so ``histogram_quantile`` works: ``gspo_staleness_bucket{le="1"}`` counts trained groups of
  lag <= 1. A lag bucket's ``le`` is the lag; a length bucket's ``le`` is the largest token count of its bin
  (2^b - 1, see `names.length_bin`), so ``gspo_response_length_trained_bucket{le="15"}`` counts responses of at
  most 15 tokens. ``gspo_staleness_tokens`` weighs each lag by tokens (its buckets count tokens);
- per-actor metrics: one family per suffix, labelled by actor, ``gspo_actor_tokens_per_s{actor="a1"} 812``.
"""

from __future__ import annotations

import math
from typing import Iterator, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gspo_async.telemetry.names import (COUNTER, HIST, LAG_BINS, LENGTH_BINS, N_LENGTH_BINS, bin_upper, lookup,
                                        prometheus_name, split_actor_name)



class Snapshots(Protocol):
    """What the export reads: a `MetricRegistry` (typed structurally, so this module does not import the registry
    that imports it)."""

    def snapshot(self) -> dict[str, float | list[float]]: ...

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def histogram_buckets(name: str, counts: list[float]) -> tuple[list[tuple[str, float]], float | None]:
    """Cumulative ``(le, count)`` buckets of a histogram-list's per-bin counts, ending with ``+Inf``, and the
    ``_sum`` of the observed values when the bins give it exactly (lag bins: each bin is one value), else None.

    >>> histogram_buckets("staleness/hist", [5, 0, 1])
    ([('0', 5.0), ('1', 5.0), ('2', 6.0), ('+Inf', 6.0)], 2.0)
    """
    spec = lookup(name)
    if spec.kind != HIST:
        raise ValueError(f"{name!r} is a {spec.kind}, not a histogram-list")
    if spec.bins == LENGTH_BINS:  # every length bucket on every scrape, so quantiles over time see one layout
        counts = list(counts) + [0.0] * (N_LENGTH_BINS - len(counts))
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for i, c in enumerate(counts):
        total += c if math.isfinite(c) else 0.0
        upper = bin_upper(spec, i)
        if math.isinf(upper):
            break  # the open last bin is the +Inf bucket
        buckets.append((_le(upper), total))
    buckets.append(("+Inf", float(sum(c for c in counts if math.isfinite(c)))))
    exact_sum = float(sum(i * c for i, c in enumerate(counts) if math.isfinite(c))) if spec.bins == LAG_BINS else None
    return buckets, exact_sum


def families(values: dict[str, float | list[float]]) -> list[Metric]:
    """prometheus-client metric families of a registry snapshot, sorted by exported name."""
    out: dict[str, Metric] = {}
    for name in sorted(values):
        spec = lookup(name)
        prom = prometheus_name(name)
        unit = f" ({spec.unit})" if spec.unit else ""
        doc = f"{spec.description}{unit}; window: {spec.window}"
        value = values[name]
        actor = split_actor_name(name)
        labels = ["actor"] if actor is not None else []
        family = out.get(prom)
        if family is None:
            if spec.kind == HIST:
                family = HistogramMetricFamily(prom, doc, labels=labels)
            elif spec.kind == COUNTER:
                family = CounterMetricFamily(prom, doc, labels=labels)
            else:
                family = GaugeMetricFamily(prom, doc, labels=labels)
            out[prom] = family
        label_values = [actor[0]] if actor is not None else []
        if spec.kind == HIST:
            buckets, total = histogram_buckets(name, list(value))  # type: ignore[arg-type]
            family.add_metric(label_values, buckets, total)  # type: ignore[call-arg]
        else:
            family.add_metric(label_values, float(value))  # type: ignore[arg-type]
    return [out[k] for k in sorted(out)]


class RegistryCollector:
    """A prometheus-client collector that answers every scrape from the registry's current snapshot."""

    def __init__(self, registry: Snapshots) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from families(self.registry.snapshot())


def render(values: dict[str, float | list[float]]) -> str:
    """Prometheus text (format 0.0.4) of a snapshot, as prometheus-client writes it."""

    class _Snapshot:
        def collect(self) -> Iterator[Metric]:
            yield from families(values)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot())
    return generate_latest(reg).decode()


class PrometheusServer:
    """prometheus-client's HTTP server (``/metrics``; any path answers the metrics) over one registry, on a daemon
    thread. ``.port`` is the bound port; ``.close()`` stops it."""

    def __init__(self, registry: Snapshots, host: str, port: int) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(RegistryCollector(registry))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)
        except OSError as err:
            raise OSError(f"cannot serve Prometheus metrics on {host}:{port}: {err}. Pick a free port "
                          "(telemetry.prometheus_port, 0 = any free port)") from err
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
