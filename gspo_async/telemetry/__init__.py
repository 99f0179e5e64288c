"""Metrics: one registry per process, exported as JSONL, Prometheus text and the live dashboard."""

from gspo_async.telemetry.names import ACTOR_METRICS, METRICS, Metric, actor_metric, length_bin, lookup, prometheus_name
from gspo_async.telemetry.registry import MetricRegistry, actor_filename, read_metrics, read_metrics_from

__all__ = ["MetricRegistry", "read_metrics", "read_metrics_from", "actor_filename", "METRICS", "ACTOR_METRICS",
           "Metric", "actor_metric", "length_bin", "lookup", "prometheus_name"]
