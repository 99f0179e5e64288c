"""The single list of metric names: each metric's kind, unit, window and meaning (contract: design §5 and extras).

Every metric a process records must be listed here; `MetricRegistry` rejects any other name. The dashboard page,
the static report, the Prometheus export and the Grafana dashboard are generated from or checked against this list
(tests/telemetry/test_names.py, test_grafana.py; tests/dashboard/test_consistency.py). Kinds:

- ``gauge``: the latest value (set it).
- ``counter``: a running total (inc it, or set it to mirror a total kept elsewhere, e.g. the coordinator's).
- ``histogram-list``: a list of *cumulative* counts, one per bin, since the run started. Cumulative lists lose
  nothing when records are written every few seconds instead of every step; the dashboard shows the difference
  between consecutive records and Prometheus exports them as real histograms (``<name>_bucket{le=...}``).
  Bins: ``lag`` = staleness 0, 1, ..., K (versions); ``length`` = the bit length of a response's token count:
  bin 0 holds length 0 and bin b >= 1 holds lengths [2^(b-1), 2^b - 1] (bin 4 = 8..15 tokens), see `length_bin`.

Windows (`Metric.window`): ``step`` = the last optimiser step's batch; ``total`` = since the learner started (for
counters mirrored from the coordinator: since the run started, resumes included); ``rate window`` = the last
`RATE_WINDOW_S` seconds of wall time (the same window for generation and training rates); ``now`` = the state at
the record's time; ``eval`` = the latest evaluation; ``actor window`` = the actor's own rate window.

Per-actor metrics are a family: ``actor/<id>/<suffix>`` with the suffix from `ACTOR_METRICS`. Prometheus
exports them as one labelled metric, ``gspo_actor_<suffix>{actor="<id>"}``.

Event counters (`EVENTS`): each increase between two records is an event the dashboard marks on every time chart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gspo_async.protocol.ids import ID_CHARS, MAX_ACTOR_ID_CHARS

GAUGE = "gauge"
COUNTER = "counter"
HIST = "histogram-list"
KINDS = (GAUGE, COUNTER, HIST)

# Bins of the histogram-list metrics (`Metric.bins`).
LAG_BINS = "lag"
LENGTH_BINS = "length"
N_LENGTH_BINS = 18  # bin 17 holds every length >= 2^16 = 65536 tokens

# Wall-time window (seconds) of the rate and busy metrics: generation and training rates use the same one.
RATE_WINDOW_S = 30.0

# Windows of `Metric.window`.
STEP = "step"
TOTAL = "total"
RATE = "rate window"
NOW = "now"
EVAL = "eval"
ACTOR_WINDOW = "actor window"
WINDOWS = (STEP, TOTAL, RATE, NOW, EVAL, ACTOR_WINDOW)

PROMETHEUS_PREFIX = "gspo_"
# The id rule of the wire protocol (protocol/ids.py): an id the learner accepts always makes a valid metric name.
ACTOR_ID_RE = re.compile(rf"^[{ID_CHARS}]{{1,{MAX_ACTOR_ID_CHARS}}}$")


@dataclass(frozen=True)
class Metric:
    """One metric: its name, kind, one-line description, unit (empty when dimensionless), window (see the module
    docstring), bins (histogram-lists only) and, for histogram-lists, the Prometheus histogram name."""

    name: str
    kind: str
    description: str
    unit: str = ""
    bins: str = ""  # LAG_BINS or LENGTH_BINS for histogram-list metrics
    window: str = NOW
    prometheus: str = ""  # export name of a histogram-list (a Prometheus histogram), without the prefix
    when: str = ""  # the setting under which it is written, for a metric not every run writes ("" = every run)


def _m(name: str, kind: str, description: str, unit: str = "", bins: str = "", window: str = "",
       prometheus: str = "", when: str = "") -> Metric:
    if not window:
        window = TOTAL if kind in (COUNTER, HIST) else NOW
    return Metric(name, kind, description, unit, bins, window, prometheus, when)


_METRICS: list[Metric] = [
    # --- training (design §5) ---
    _m("train/step", COUNTER, "optimiser steps done", "steps"),
    _m("train/version", GAUGE, "weight version published (0 = initial weights, +1 per update)", "version"),
    _m("train/loss", GAUGE, "total loss of the last optimiser step", window=STEP),
    _m("train/pg_loss", GAUGE, "policy-gradient part of the loss", window=STEP),
    _m("train/kl_loss", GAUGE, "KL-to-reference part of the loss (coefficient applied; 0 without use_kl_loss)",
       window=STEP),
    _m("train/entropy", GAUGE, "mean token entropy of the current policy", "nats", window=STEP),
    _m("train/grad_norm", GAUGE, "gradient norm before clipping, mean over the step's optimiser updates", window=STEP),
    _m("train/clipfrac", GAUGE, "fraction of tokens whose ratio clip was active", window=STEP),
    _m("train/clipfrac_seq", GAUGE, "fraction of sequences whose ratio clip was active", window=STEP),
    _m("train/dual_clipfrac", GAUGE, "fraction of tokens whose dual clip was active (0 without dual_clip_loss)",
       window=STEP),
    _m("train/ratio_mean", GAUGE, "mean GSPO sequence ratio s_i", window=STEP),
    _m("train/ratio_max", GAUGE, "largest GSPO sequence ratio s_i", window=STEP),
    _m("train/is_weight_mean", GAUGE, "mean staleness-correction weight w_i (exactly 1 unless decoupled)", window=STEP),
    _m("train/is_weight_max", GAUGE, "largest staleness-correction weight w_i (exactly 1 unless decoupled)",
       window=STEP),
    _m("train/rejected_frac", GAUGE, "fraction of sequences masked by the off-policy rejection bounds", window=STEP),
    _m("train/approx_kl", GAUGE, "k3 estimate of KL(pi_old || pi_theta), token mean", "nats", window=STEP),
    _m("train/lr", GAUGE, "learning rate of the last optimiser step", window=STEP),
    _m("train/step_s", GAUGE, "compute time of the last step: train, publish and weight sync, waits excluded", "s",
       window=STEP),
    _m("train/tokens", COUNTER, "response tokens trained on", "tokens"),
    _m("train/samples", COUNTER, "responses trained on", "responses"),
    _m("train/groups", COUNTER, "groups trained on", "groups"),
    _m("train/padding_frac", GAUGE, "share of the training passes' token slots that were padding", window=STEP),
    # --- rewards, evaluation, responses ---
    _m("reward/mean", GAUGE, "mean raw reward of the last training batch", window=STEP),
    _m("reward/std", GAUGE, "standard deviation of the raw reward of the last training batch", window=STEP),
    _m("reward/errors/exception", COUNTER, "reward calls that raised (scored 0)", "calls",
       when="a reward call failed"),
    _m("reward/errors/timeout", COUNTER, "reward calls past task.reward_timeout_s (scored 0)", "calls",
       when="a reward call failed"),
    _m("reward/errors/bad_value", COUNTER, "reward calls that returned no finite number (scored 0)", "calls",
       when="a reward call failed"),
    _m("reward/error_frac", GAUGE, "share of responses with a failed reward call, last reward_error_window groups",
       when="a reward call failed"),
    _m("eval/accuracy", GAUGE, "held-out accuracy (mean reward) of the latest evaluation; named sets: "
       "eval/<set>/accuracy", window=EVAL),
    _m("eval/runs", COUNTER, "evaluations run (an increase marks an evaluation)", "evaluations"),
    _m("eval/pass_at_k", GAUGE, "share of held-out prompts with a reward >= 1 among learner.eval_n responses",
       window=EVAL),
    _m("eval/mean_length", GAUGE, "mean response length of the latest evaluation", "tokens", window=EVAL),
    _m("eval/version", GAUGE, "weight version of the latest evaluation (on the fleet: this version or newer)",
       "versions", window=EVAL),
    _m("response/length_mean", GAUGE, "mean response length of the last training batch", "tokens", window=STEP),
    _m("response/length_max", GAUGE, "longest response of the last training batch", "tokens", window=STEP),
    _m("response/truncated_frac", GAUGE, "share of the last batch's responses cut at response_length", window=STEP),
    _m("reward/overlong_penalty", GAUGE, "mean soft overlong penalty added to the last batch's rewards (<= 0)",
       window=STEP, when="overlong_penalty.enabled"),
    # --- staleness (design §5) ---
    _m("staleness/mean", GAUGE, "mean staleness of the last trained batch (group-weighted)", "versions", window=STEP),
    _m("staleness/max", GAUGE, "largest staleness in the last trained batch", "versions", window=STEP),
    _m("staleness/hist", HIST, "trained groups per staleness lag 0..K, cumulative", "groups", LAG_BINS,
       prometheus="staleness"),
    _m("staleness/hist_tokens", HIST, "trained response tokens per staleness lag 0..K, cumulative", "tokens",
       LAG_BINS, prometheus="staleness_tokens"),
    _m("staleness/dropped", COUNTER, "groups dropped as too stale", "groups"),
    _m("staleness/dropped_tokens", COUNTER, "response tokens in groups dropped as too stale", "tokens"),
    # --- drops by reason (stale drops are staleness/dropped) ---
    _m("drops/invalid", COUNTER, "rollout groups rejected by validation", "groups"),
    _m("drops/duplicate", COUNTER, "groups received again and de-duplicated (resends, superseded leases)", "groups"),
    _m("drops/late", COUNTER, "groups that arrived for a prompt already dropped (e.g. too many lease attempts)",
       "groups"),
    _m("drops/lease_attempts", COUNTER, "prompts dropped after too many leases without a group", "prompts"),
    _m("drops/prompt_too_long", COUNTER, "prompts dropped for exceeding prompt_length", "prompts"),
    _m("drops/other", COUNTER, "prompts dropped for any other reason (see summary.json)", "prompts"),
    _m("groups/filtered", COUNTER, "groups dropped by filter_groups (all rewards equal: no signal)", "groups",
       when="filter_groups.enabled"),
    _m("drops/length_hist_dropped", HIST, "responses of dropped groups per length bin, cumulative", "responses",
       LENGTH_BINS, prometheus="response_length_dropped"),
    _m("drops/length_hist_kept", HIST, "responses of trained groups per length bin, cumulative", "responses",
       LENGTH_BINS, prometheus="response_length_trained"),
    # --- throughput (design §5): learner-side totals over one wall window, so the two rates compare ---
    _m("throughput/gen_tokens_per_s", GAUGE, "response tokens accepted from the fleet per wall second", "tokens/s",
       window=RATE),
    _m("throughput/train_tokens_per_s", GAUGE, "response tokens trained per wall second (achieved, waits included)",
       "tokens/s", window=RATE),
    _m("throughput/samples_per_s", GAUGE, "responses trained per wall second (achieved, waits included)",
       "responses/s", window=RATE),
    _m("throughput/gen_tokens", COUNTER, "response tokens accepted from the fleet", "tokens"),
    # --- learner ---
    _m("learner/busy_frac", GAUGE, "share of wall time spent training (step compute), in [0, 1]", window=RATE),
    _m("learner/busy_frac_since_start", GAUGE, "share of wall time spent training since the learner started, in [0, 1]",
       window=TOTAL),
    _m("learner/busy_s", COUNTER, "wall time spent training (step compute)", "s"),
    _m("learner/wait_s", GAUGE, "time the last optimiser step waited for data", "s", window=STEP),
    _m("learner/wait_total_s", COUNTER, "time spent waiting for data", "s"),
    _m("learner/started_at", GAUGE, "unix time this learner process started (a change marks a resume)", "s"),
    _m("learner/finished", GAUGE, "1 in the record written after the last step (the run ended), else 0"),
    _m("checkpoint/saves", COUNTER, "checkpoints saved (an increase marks a checkpoint)", "saves"),
    _m("checkpoint/failures", COUNTER, "checkpoint saves that failed (full disk, permissions); training went on",
       "saves"),
    _m("ledger/write_failures", COUNTER, "ledger appends that failed; their records are missing from ledger.jsonl",
       "writes"),
    # --- queues, leases, fleet ---
    _m("buffer/groups", GAUGE, "groups accepted and waiting to be trained", "groups"),
    _m("buffer/age_mean_s", GAUGE, "mean time queued groups have waited in the buffer", "s"),
    _m("buffer/age_max_s", GAUGE, "longest time a queued group has waited in the buffer", "s"),
    _m("leases/in_flight", GAUGE, "prompt leases granted and not yet returned", "leases"),
    _m("leases/capacity", GAUGE, "leases admission would grant now (0: the staleness bound holds new work back)",
       "leases"),
    _m("leases/age_mean_s", GAUGE, "mean age of the leases in flight", "s"),
    _m("leases/age_max_s", GAUGE, "age of the oldest lease in flight", "s"),
    _m("leases/granted", COUNTER, "prompt leases granted", "leases"),
    _m("leases/expired", COUNTER, "leases that expired and were re-issued", "leases"),
    _m("actors/alive", GAUGE, "actors with a recent heartbeat", "actors"),
    _m("actors/joined", COUNTER, "actor registrations (an increase marks a join)", "actors"),
    _m("actors/left", COUNTER, "actors that said goodbye or timed out (an increase marks a leave)", "actors"),
    # --- weight sync (design §5 plus the transfer / failure split) ---
    _m("weights/sync_s", GAUGE, "duration of the last weight broadcast, group set-up included", "s"),
    _m("weights/transfer_s", GAUGE, "time of the last broadcast spent moving bytes", "s"),
    _m("weights/bytes", GAUGE, "bytes sent in the last weight broadcast", "bytes"),
    _m("weights/version_skew_max", GAUGE, "largest actor version lag (see actor/<id>/version_lag)", "versions"),
    _m("weights/version_lag", GAUGE, "learner version minus the newest version broadcast, after a step (growing: "
       "broadcasts lag training)", "versions"),
    _m("weights/wait_s", GAUGE, "time the last step waited for the fleet's weights (weight_sync.max_version_lag)",
       "s"),
    _m("weights/syncs", COUNTER, "weight broadcasts done (a version every broadcast group received)", "syncs"),
    _m("weights/bytes_sent", COUNTER, "bytes sent in all weight broadcasts", "bytes"),
    _m("weights/failures", COUNTER, "broadcasts to one group that timed out or lost a receiver (an increase marks "
       "a failure)", "syncs"),
    _m("weights/excluded", GAUGE, "actors left out of broadcasts after failing one (weight_sync.exclude_s)",
       "actors"),
    _m("weights/group_builds", COUNTER, "broadcast process groups built or tried (per change of a group's members; "
       "weight_sync.cohort_size)", "groups"),
]

# The per-actor family, keyed by suffix: `actor/<id>/<suffix>`.
_ACTOR_METRICS: list[Metric] = [
    _m("tokens_per_s", GAUGE, "response tokens generated per second by this actor", "tokens/s", window=ACTOR_WINDOW),
    _m("version", GAUGE, "weight version this actor reports having applied (heartbeat)", "version"),
    _m("delivered_version", GAUGE, "oldest weight version in the newest group this actor delivered", "version"),
    _m("version_lag", GAUGE, "learner version minus the oldest version of its newest group, on arrival", "versions"),
    _m("tokens", COUNTER, "response tokens generated by this actor", "tokens"),
    _m("groups", COUNTER, "groups this actor delivered", "groups"),
    _m("busy_frac", GAUGE, "share of wall time this actor spent generating, in [0, 1]", window=ACTOR_WINDOW),
    _m("leases", GAUGE, "prompt leases this actor holds", "leases"),
    _m("pending_groups", GAUGE, "finished groups waiting for the learner's acknowledgement", "groups"),
    _m("heartbeat_age_s", GAUGE, "time since this actor's last message reached the learner", "s"),
    _m("alive", GAUGE, "1 while the actor's heartbeats arrive, 0 after it left or timed out"),
]

# Counters whose increase between two records is an event the dashboard marks on its time charts: name -> label.
# `learner/started_at` is a gauge: a change after the first record marks a resume.
EVENTS: dict[str, str] = {
    "eval/runs": "evaluation", "checkpoint/saves": "checkpoint", "actors/joined": "actor joined",
    "actors/left": "actor left", "weights/failures": "weight-sync failure", "learner/started_at": "resume",
}

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


# The per-reward-function family: `reward/<fn>/mean` and `reward/<fn>/<key>` for the extra keys of a dict return.
REWARD_FN_METRIC = _m("reward/<fn>/<key>", GAUGE, "one reward function's mean (or a key of its dict) over the "
                      "last training batch", window=STEP)


# One named eval set (task.eval_sets): `eval/<set>/accuracy`, `eval/<set>/pass_at_k`, `eval/<set>/mean_length`.
EVAL_SET_KEYS = ("accuracy", "pass_at_k", "mean_length")
EVAL_SET_METRIC = _m("eval/<set>/<key>", GAUGE, "latest evaluation of a named set (task.eval_sets): accuracy, "
                     "pass_at_k or mean_length", window=EVAL)


# Groups dropped by filter_groups per constant reward value: `groups/filtered/<reward>` (1.0 -> 1, 0.5 -> 0_5).
FILTERED_BY_REWARD_METRIC = _m("groups/filtered/<reward>", COUNTER, "groups dropped by filter_groups whose every "
                               "response had this reward", "groups")


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
    parts = name.split("/")
    if parts[0] == "reward" and len(parts) == 3 and parts[1] != "errors" and all(
            re.fullmatch(r"[a-z0-9_]+", p) for p in parts[1:]):
        return REWARD_FN_METRIC  # reward/<function>/<mean or a key the function's dict returned>
    if parts[0] == "eval" and len(parts) == 3 and parts[2] in EVAL_SET_KEYS and re.fullmatch(r"[a-z0-9_]+", parts[1]):
        return EVAL_SET_METRIC
    if parts[:2] == ["groups", "filtered"] and len(parts) == 3 and re.fullmatch(r"[a-z0-9_]+", parts[2]):
        return FILTERED_BY_REWARD_METRIC
    import difflib

    close = difflib.get_close_matches(name, list(METRICS), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown metric name {name!r}.{hint} Every metric must be listed in "
                     "gspo_async/telemetry/names.py (with its kind and description) before it is recorded")


def prometheus_name(name: str) -> str:
    """Exported name: ``gspo_`` + the name with every character outside [A-Za-z0-9_] turned into ``_``.

    Per-actor names map to their family: ``actor/a1/tokens_per_s -> gspo_actor_tokens_per_s``; a histogram-list
    maps to its Prometheus histogram: ``staleness/hist -> gspo_staleness`` (samples ``gspo_staleness_bucket``).
    """
    split = split_actor_name(name)
    if split is not None:
        name = f"actor/{split[1]}"
    elif name in METRICS and METRICS[name].prometheus:
        return PROMETHEUS_PREFIX + METRICS[name].prometheus
    return PROMETHEUS_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name)


def length_bin(tokens: float) -> int:
    """Bin of a response length: its bit length, so bin 0 holds 0 tokens and bin b >= 1 holds [2^(b-1), 2^b - 1]
    (1 token: bin 1; 8..15 tokens: bin 4); lengths of 2^16 tokens and more share the last bin. Fractional lengths
    (a mean) are floored first."""
    try:
        value = float(tokens)  # ints, floats and numpy scalars
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(tokens, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"a length must be a finite number of tokens >= 0, got {tokens!r}")
    return min(int(value).bit_length(), N_LENGTH_BINS - 1)


def bin_upper(spec: Metric, index: int) -> float:
    """Largest value bin `index` holds, the ``le`` bound of its Prometheus bucket: the lag itself for a lag bin,
    2^index - 1 tokens for a length bin (+inf for the last one)."""
    if spec.bins == LENGTH_BINS:
        return math.inf if index >= N_LENGTH_BINS - 1 else float(2 ** index - 1)
    return float(index)


def bin_label(spec: Metric, index: int) -> str:
    """Human label of bin `index`: ``"3"`` for a lag; ``"0"``, ``"1"``, ``"2-3"``, ``"64-127"``, ``"65536+"`` for a
    length bin (inclusive token counts)."""
    if spec.bins == LENGTH_BINS:
        if index <= 1:
            return str(index)
        lo = 2 ** (index - 1)
        if index >= N_LENGTH_BINS - 1:
            return f"{lo}+"
        return f"{lo}-{2 ** index - 1}"
    return str(index)


def metrics_markdown() -> str:
    """The metric list as a Markdown table (docs/telemetry.md holds it; a test keeps the two equal)."""

    def row(name: str, spec: Metric) -> str:
        export = PROMETHEUS_PREFIX + spec.prometheus if spec.prometheus else prometheus_name(name)
        if spec.kind == COUNTER:
            export += "_total"
        elif spec.kind == HIST:
            export += "_bucket{le}"
        when = f" (only with `{spec.when}`)" if spec.when else ""
        return f"| `{name}` | {spec.kind} | {spec.unit or '–'} | {spec.window} | {spec.description}{when} | `{export}` |"

    lines = ["| metric | kind | unit | window | meaning | Prometheus |", "|---|---|---|---|---|---|"]
    lines += [row(name, spec) for name, spec in METRICS.items()]
    lines += [row(f"actor/<id>/{suffix}", spec).replace(f"`{prometheus_name('actor/x/' + suffix)}",
                                                          f"`{prometheus_name('actor/x/' + suffix)}{{actor}}")
              for suffix, spec in ACTOR_METRICS.items()]
    return "\n".join(lines) + "\n"
