"""The single list of metric names (contract: design §5 plus the staleness, throughput and drop extras).

Every metric a process records must be listed here; `MetricRegistry` rejects any other name. Kinds:

- ``gauge``: the latest value (set it).
- ``counter``: a running total since the process started (inc it, or set it to mirror a total received from
  elsewhere, e.g. an actor's heartbeat).
- ``histogram-list``: a list of *cumulative* counts, one per bin, since the run started. Cumulative lists lose
  nothing when records are written every few seconds instead of every step, and Prometheus can take
  ``increase()`` over them; the dashboard shows the difference between consecutive records.
  Bins: ``lag`` = staleness 0, 1, ..., K (versions); ``length`` = log2 length bins, bin i holds
  lengths in [2^i, 2^(i+1)) tokens (bin 0 also holds length 0), see `length_bin`.

Per-actor metrics are a family: ``actor/<id>/<suffix>`` with the suffix from `ACTOR_METRICS`. Prometheus
exports them as one labelled metric, ``gspo_actor_<suffix>{actor="<id>"}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GAUGE = "gauge"
COUNTER = "counter"
HIST = "histogram-list"
KINDS = (GAUGE, COUNTER, HIST)

# Bins of the histogram-list metrics (`Metric.bins`).
LAG_BINS = "lag"
LENGTH_BINS = "length"
N_LENGTH_BINS = 17  # up to 2^17 = 131072 tokens; longer lengths fall into the last bin

PROMETHEUS_PREFIX = "gspo_"
ACTOR_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass(frozen=True)
class Metric:
    """One metric: its name, kind, unit (empty when dimensionless) and a one-line description."""

    name: str
    kind: str
    description: str
    unit: str = ""
    bins: str = ""  # LAG_BINS or LENGTH_BINS for histogram-list metrics


def _m(name: str, kind: str, description: str, unit: str = "", bins: str = "") -> Metric:
    return Metric(name, kind, description, unit, bins)


_METRICS: list[Metric] = [
    # --- training (design §5) ---
    _m("train/step", COUNTER, "optimiser steps done"),
    _m("train/version", GAUGE, "weight version published (0 = initial weights, +1 per update)"),
    _m("train/loss", GAUGE, "total loss of the last optimiser step"),
    _m("train/pg_loss", GAUGE, "policy-gradient part of the loss"),
    _m("train/kl_loss", GAUGE, "KL-to-reference part of the loss (coefficient applied)"),
    _m("train/entropy", GAUGE, "mean token entropy of the current policy", "nats"),
    _m("train/grad_norm", GAUGE, "gradient norm before clipping"),
    _m("train/clipfrac", GAUGE, "fraction of tokens whose ratio clip was active"),
    _m("train/clipfrac_seq", GAUGE, "fraction of sequences whose ratio clip was active"),
    _m("train/ratio_mean", GAUGE, "mean GSPO sequence ratio s_i"),
    _m("train/ratio_max", GAUGE, "largest GSPO sequence ratio s_i"),
    _m("train/ratio_min", GAUGE, "smallest GSPO sequence ratio s_i"),
    _m("train/is_weight_mean", GAUGE, "mean staleness-correction weight w_i"),
    _m("train/is_weight_max", GAUGE, "largest staleness-correction weight w_i"),
    _m("train/is_weight_min", GAUGE, "smallest staleness-correction weight w_i"),
    _m("train/is_weight_ess", GAUGE, "normalised effective sample size (sum w)^2 / (n sum w^2), in (0, 1]"),
    _m("train/rejected_frac", GAUGE, "fraction of sequences masked by the off-policy rejection bounds"),
    _m("train/kl", GAUGE, "k3 KL estimate of the current policy to the reference", "nats"),
    _m("train/mismatch_kl", GAUGE, "k3 KL estimate between behaviour and learner log-probs", "nats"),
    _m("train/lr", GAUGE, "learning rate of the last optimiser step"),
    _m("train/step_s", GAUGE, "wall time of the last optimiser step", "s"),
    _m("train/tokens", COUNTER, "response tokens trained on", "tokens"),
    _m("train/samples", COUNTER, "responses trained on", "samples"),
    _m("train/groups", COUNTER, "groups trained on", "groups"),
    # --- rewards, evaluation, responses ---
    _m("reward/mean", GAUGE, "mean raw reward of the last training batch"),
    _m("reward/std", GAUGE, "standard deviation of the raw reward of the last training batch"),
    _m("reward/zero_std_frac", GAUGE, "fraction of groups whose rewards are all equal (zero advantage)"),
    _m("eval/accuracy", GAUGE, "held-out accuracy of the latest evaluation, in [0, 1]"),
    _m("response/length_mean", GAUGE, "mean response length of the last training batch", "tokens"),
    _m("response/length_max", GAUGE, "longest response of the last training batch", "tokens"),
    _m("response/truncated_frac", GAUGE, "fraction of responses cut at the generation length limit"),
    # --- staleness (design §5 plus in-flight / queued split) ---
    _m("staleness/mean", GAUGE, "mean staleness of the last trained batch (group-weighted)", "versions"),
    _m("staleness/max", GAUGE, "largest staleness in the last trained batch", "versions"),
    _m("staleness/hist", HIST, "trained groups per staleness lag 0..K, cumulative", "groups", LAG_BINS),
    _m("staleness/hist_tokens", HIST, "trained response tokens per staleness lag 0..K, cumulative", "tokens", LAG_BINS),
    _m("staleness/dropped", COUNTER, "groups dropped as too stale", "groups"),
    _m("staleness/dropped_tokens", COUNTER, "response tokens in groups dropped as too stale", "tokens"),
    _m("staleness/in_flight_mean", GAUGE, "mean lag of leases being generated (learner - lease version)", "versions"),
    _m("staleness/in_flight_max", GAUGE, "largest lag of a lease still being generated", "versions"),
    _m("staleness/queued_mean", GAUGE, "mean lag of groups waiting in the buffer", "versions"),
    _m("staleness/queued_max", GAUGE, "largest lag of a group waiting in the buffer", "versions"),
    # --- drops by reason (stale drops are staleness/dropped) ---
    _m("drops/invalid", COUNTER, "messages rejected by validation", "groups"),
    _m("drops/duplicate", COUNTER, "groups received twice and de-duplicated", "groups"),
    _m("drops/late", COUNTER, "groups of an expired lease that arrived after it was re-issued", "groups"),
    _m("drops/zero_variance", COUNTER, "groups filtered out because all their rewards were equal", "groups"),
    _m("drops/filtered", COUNTER, "groups removed by a user filter or the rejection mask", "groups"),
    _m("drops/length_hist_dropped", HIST, "dropped groups per mean-response-length bin, cumulative", "groups",
       LENGTH_BINS),
    _m("drops/length_hist_kept", HIST, "trained groups per mean-response-length bin, cumulative", "groups",
       LENGTH_BINS),
    # --- throughput (design §5) ---
    _m("throughput/gen_tokens_per_s", GAUGE, "response tokens generated per second, whole fleet", "tokens/s"),
    _m("throughput/train_tokens_per_s", GAUGE, "response tokens trained per second", "tokens/s"),
    _m("throughput/samples_per_s", GAUGE, "responses trained per second", "samples/s"),
    _m("throughput/gen_tokens", COUNTER, "response tokens received from the fleet", "tokens"),
    # --- learner ---
    _m("learner/busy_frac", GAUGE, "share of wall time spent training since the previous record, in [0, 1]"),
    _m("learner/wait_s", GAUGE, "time the last optimiser step waited for data", "s"),
    _m("learner/wait_total_s", COUNTER, "total time spent waiting for data", "s"),
    _m("checkpoint/failures", COUNTER, "checkpoint saves that failed (full disk, permissions); training went on",
       "saves"),
    _m("ledger/write_failures", COUNTER, "ledger appends that failed; their records are missing from ledger.jsonl",
       "writes"),
    # --- queues, leases, fleet ---
    _m("buffer/groups", GAUGE, "groups accepted and waiting to be trained", "groups"),
    _m("buffer/age_mean_s", GAUGE, "mean time queued groups have waited in the buffer", "s"),
    _m("buffer/age_max_s", GAUGE, "longest time a queued group has waited in the buffer", "s"),
    _m("leases/in_flight", GAUGE, "prompt leases granted and not yet returned", "leases"),
    _m("leases/age_mean_s", GAUGE, "mean age of the leases in flight", "s"),
    _m("leases/age_max_s", GAUGE, "age of the oldest lease in flight", "s"),
    _m("leases/granted", COUNTER, "prompt leases granted", "leases"),
    _m("leases/expired", COUNTER, "leases that expired and were re-issued", "leases"),
    _m("actors/alive", GAUGE, "actors with a recent heartbeat", "actors"),
    _m("actors/joined", COUNTER, "actor registrations", "actors"),
    _m("actors/left", COUNTER, "actors that said goodbye or timed out", "actors"),
    # --- weight sync (design §5 plus the transfer / failure split) ---
    _m("weights/sync_s", GAUGE, "duration of the last weight broadcast, group set-up included", "s"),
    _m("weights/transfer_s", GAUGE, "time of the last broadcast spent moving bytes", "s"),
    _m("weights/bytes", GAUGE, "bytes sent in the last weight broadcast", "bytes"),
    _m("weights/version_skew_max", GAUGE, "largest gap between the learner version and an actor's version", "versions"),
    _m("weights/syncs", COUNTER, "weight broadcasts done", "syncs"),
    _m("weights/bytes_sent", COUNTER, "bytes sent in all weight broadcasts", "bytes"),
    _m("weights/failures", COUNTER, "broadcasts that timed out or lost a receiver (group rebuilt)", "syncs"),
    _m("weights/excluded", GAUGE, "actors left out of broadcasts after failing one (weight_sync.exclude_s)",
       "actors"),
]

# The per-actor family, keyed by suffix: `actor/<id>/<suffix>`.
_ACTOR_METRICS: list[Metric] = [
    _m("tokens_per_s", GAUGE, "response tokens generated per second by this actor", "tokens/s"),
    _m("version", GAUGE, "weight version this actor generates with", "version"),
    _m("version_lag", GAUGE, "learner version minus this actor's version", "versions"),
    _m("tokens", COUNTER, "response tokens generated by this actor", "tokens"),
    _m("groups", COUNTER, "groups this actor delivered", "groups"),
    _m("busy_frac", GAUGE, "share of wall time this actor spent generating, in [0, 1]"),
    _m("leases", GAUGE, "prompt leases this actor holds", "leases"),
    _m("pending_groups", GAUGE, "finished groups waiting for the learner's acknowledgement", "groups"),
    _m("kv_usage", GAUGE, "KV-cache usage of the engine, in [0, 1]"),
    _m("pause_s", GAUGE, "generation pause of the last weight update on this actor", "s"),
    _m("heartbeat_age_s", GAUGE, "time since this actor's last heartbeat reached the learner", "s"),
    _m("alive", GAUGE, "1 while the actor's heartbeats arrive, 0 after it left or timed out"),
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
ACTOR_METRICS: dict[str, Metric] = {m.name: m for m in _ACTOR_METRICS}


def actor_metric(actor_id: str, suffix: str) -> str:
    """The registry name of an actor's metric: ``actor_metric("a1", "tokens_per_s") -> "actor/a1/tokens_per_s"``."""
    name = f"actor/{actor_id}/{suffix}"
    lookup(name)
    return name


def split_actor_name(name: str) -> tuple[str, str] | None:
    """``"actor/<id>/<suffix>" -> (id, suffix)``; None for a name outside the actor family."""
    if not name.startswith("actor/"):
        return None
    parts = name.split("/")
    if len(parts) != 3:
        return None
    return parts[1], parts[2]


def lookup(name: str) -> Metric:
    """The spec of a metric name; ValueError naming the problem and the closest valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"metric names are strings, got {type(name).__name__}: {name!r}")
    spec = METRICS.get(name)
    if spec is not None:
        return spec
    if name.startswith("actor/"):
        parts = name.split("/")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"per-actor metric {name!r} must look like 'actor/<id>/<suffix>' "
                             f"(suffixes: {', '.join(ACTOR_METRICS)})")
        actor_id, suffix = parts[1], parts[2]
        if not ACTOR_ID_RE.match(actor_id):
            raise ValueError(f"actor id {actor_id!r} in {name!r} may only use letters, digits and _.:@- "
                             "(at most 128 characters); rename the actor")
        spec = ACTOR_METRICS.get(suffix)
        if spec is None:
            raise ValueError(f"unknown per-actor metric suffix {suffix!r} in {name!r}; known suffixes: "
                             f"{', '.join(ACTOR_METRICS)}. Add it to gspo_async/telemetry/names.py first")
        return spec
    import difflib

    close = difflib.get_close_matches(name, list(METRICS), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown metric name {name!r}.{hint} Every metric must be listed in "
                     "gspo_async/telemetry/names.py (with its kind and description) before it is recorded")


def prometheus_name(name: str) -> str:
    """Exported name: ``gspo_`` + the name with every character outside [A-Za-z0-9_] turned into ``_``.

    Per-actor names map to their family: ``actor/a1/tokens_per_s -> gspo_actor_tokens_per_s``.
    """
    split = split_actor_name(name)
    if split is not None:
        name = f"actor/{split[1]}"
    return PROMETHEUS_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name)


def length_bin(tokens: float) -> int:
    """Index of the log2 length bin holding `tokens`: bin i covers [2^i, 2^(i+1)); 0 and 1 token are bin 0."""
    if not math.isfinite(tokens) or tokens < 0:
        raise ValueError(f"a length must be a finite number of tokens >= 0, got {tokens!r}")
    if tokens < 2:
        return 0
    return min(int(math.floor(math.log2(tokens))), N_LENGTH_BINS - 1)


def bin_label(spec: Metric, index: int) -> str:
    """Human and Prometheus label of bin `index`: ``"3"`` for a lag, ``"64-127"`` for a length bin."""
    if spec.bins == LENGTH_BINS:
        lo = 0 if index == 0 else 2 ** index
        if index >= N_LENGTH_BINS - 1:
            return f"{lo}+"
        return f"{lo}-{2 ** (index + 1) - 1}"
    return str(index)
