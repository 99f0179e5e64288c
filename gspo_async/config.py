"""The one config schema of gspo-async.

A run is described by a single YAML file validated by :class:`Config`. The algorithm keys sit at the top level
and keep the names and semantics of ROLL's GSPO config (so ``configs/example_gspo.yaml`` is the seed document's
block, unchanged); everything about processes, sockets and files lives in named sections.

Loading:  ``load_config(path, overrides=["learner.port=6000", "ppo_epochs=2"])``.
Errors:   :class:`ConfigError`, whose message names the key, the file and line, and the closest valid key or the
          allowed values. No bad key passes silently.

This module imports only pydantic and PyYAML: ``gspo-async config check`` must answer without importing torch.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gspo_async.algo.modes import ADV_ESTIMATORS, CORRECTIONS, IMPORTANCE_SAMPLING, LOSS_AGG_MODES, REWARD_NORMS


class ConfigError(ValueError):
    """A config problem, with a message that names the key, where it was written, and the fix."""


class ConfigWarning(UserWarning):
    """A config that is valid but probably not what the user meant."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


class ModelConfig(_Section):
    path: str = Field("runs/tiny-model", description="Hugging Face model directory (or a hub id already in the local cache).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer directory; defaults to model.path.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="The dtype the model computes in: actors hold and generate in it, the learner runs "
        "forward/backward under torch.autocast in it over fp32 master weights (learner.precision).")
    logprob_path: Literal["chunked", "model"] = Field(
        "chunked", description="Learner log-probs: chunked (hidden states x output embedding a chunk at a time, "
        "with the architecture's logit transform; unknown architectures are refused) or model (the model's own "
        "forward and full [tokens x vocab] logits: any architecture, more memory).")
    build_tiny_if_missing: bool = Field(True, description="Build the tiny local model at model.path if it does not exist.")
    gradient_checkpointing: bool = False


class RewardFnConfig(_Section):
    fn: str = Field(..., description="Built-in (exact, math) or 'module:function' (conventions: docs/tasks.md).")
    weight: float = Field(1.0, description="Weight of this function in the summed reward.")
    name: Optional[str] = Field(None, description="Metric name (reward/<name>/mean); default: the function's.")


class TaskConfig(_Section):
    name: str = Field("arithmetic", description="Built-in task (arithmetic, sort), 'jsonl' or 'hf'.")
    path: Optional[str] = Field(None, description="JSONL file or Hugging Face dataset name/dir for name=jsonl|hf.")
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    messages_key: str = Field("messages", description="Field of chat-format records: [{role, content}, ...].")
    prompt_template: Optional[str] = Field(None, description="str.format template over a record's fields, e.g. "
                                           "'{question}\\nAnswer:' (jsonl / hf).")
    system_prompt: Optional[str] = Field(None, description="System turn (chat template) or first line (plain).")
    reward: str = Field("exact", description="exact | math | module:function")
    rewards: list[RewardFnConfig] = Field(default_factory=list, description="Several weighted reward functions "
                                          "(summed); replaces `reward`.")
    reward_timeout_s: float = Field(5.0, gt=0, description="Time limit of one reward call in a worker (s).")
    reward_workers: int = Field(1, ge=0, description="Worker processes scoring user rewards; 0 = in-process.")
    reward_error_limit: float = Field(0.05, ge=0, le=1, description="Stop when more than this share of the "
                                      "responses of the last reward_error_window groups failed to score.")
    reward_error_window: int = Field(32, ge=1, description="Groups over which reward_error_limit is judged.")
    constant_reward_steps: int = Field(5, ge=0, description="Warn once when every group of the first K steps "
                                       "has identical rewards (0: never).")
    chat_template: Union[Literal["auto"], bool] = Field("auto", description="auto: the tokenizer's chat template "
                                                        "when it has one; true: required; false: plain text.")
    eval_size: int = Field(200, ge=0)
    options: dict[str, Any] = Field(default_factory=dict, description="Task-specific options (e.g. digits).")
    eval_sets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="More held-out sets, each logged under eval/<name>/<key>: name -> the "
        "task settings that differ from this task's (e.g. {options: {digits: 3}} or {name: jsonl, path: x.jsonl}); "
        "the set is that task's eval split (its eval_size items). The task's own split stays under eval/<key>.")

    @model_validator(mode="after")
    def _check_rewards(self) -> "TaskConfig":
        if self.rewards and self.reward != "exact":
            raise ValueError("task.reward and task.rewards are both set: list every function under task.rewards")
        for name, settings in self.eval_sets.items():
            if not re.fullmatch(r"[a-z0-9_]{1,40}", name) or name == "default":
                raise ValueError(f"task.eval_sets: name {name!r} must be 1-40 of a-z, 0-9, _ and not 'default' (it "
                                 "becomes part of the metric names eval/<name>/<key>); rename it")
            if "eval_sets" in settings:
                raise ValueError(f"task.eval_sets.{name} sets eval_sets itself: an eval set cannot nest others")
            self.eval_set_config(name)  # the settings must make a valid task section
        return self

    def eval_set_config(self, name: str) -> "TaskConfig":
        """The task section of eval set `name`: this task's settings with the set's own on top."""
        merged = {**self.model_dump(exclude={"eval_sets"}), **self.eval_sets[name]}
        try:
            return TaskConfig(**merged)
        except ValueError as err:
            raise ValueError(f"task.eval_sets.{name}: {err}") from None


class SamplingConfig(_Section):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k.")


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: Optional[float] = Field(1.0, gt=0)
    num_mini_batches: int = Field(1, ge=1, description="Mini-batches per training batch; each is one optimiser step.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    max_tokens_per_micro_batch: Optional[int] = Field(
        None, ge=1, description="Token budget per forward/backward instead of micro_batch_size: rows sorted by "
        "length and packed so that rows x longest row <= budget (padding included). At least prompt_length + "
        "response_length. null: fixed micro_batch_size.")


class RejectionConfig(_Section):
    low: float = Field(0.5, gt=0)
    high: float = Field(2.0, gt=0)


class OffPolicyConfig(_Section):
    correction: Literal[CORRECTIONS] = "behaviour"  # type: ignore[valid-type]
    is_weight_cap: float = Field(2.0, gt=0, description="C in w = min(C, exp(mean log(prox/mu))) for 'decoupled'.")
    rejection: Optional[RejectionConfig] = Field(None, description="Geometric-mean rejection bounds on prox/mu.")
    max_staleness: int = Field(1, ge=0, description="Admission bound; 0 = synchronous.")
    drop_stale: bool = Field(True, description="Drop groups whose staleness still exceeds max_staleness at train time.")


class FilterGroupsConfig(_Section):
    enabled: bool = Field(False, description="Dynamic sampling (DAPO): drop groups whose responses all have the same "
                          "reward as they arrive and lease replacements, so every batch holds groups with signal.")
    metric: Literal["reward"] = Field("reward", description="What must vary within a group: the scored reward (the "
                                      "one per-response score the actors send).")


class OverlongPenaltyConfig(_Section):
    enabled: bool = Field(False, description="DAPO's soft overlong penalty: reward += penalty_factor * R_len (see "
                          "gspo_async/algo/overlong.py): 0 up to response_length - buffer_length, then a linear ramp "
                          "to -penalty_factor at response_length.")
    buffer_length: int = Field(512, ge=1, description="L_buf, tokens before response_length where the ramp starts.")
    penalty_factor: float = Field(1.0, ge=0, description="Penalty at response_length (the ramp's depth).")


class CurveServerConfig(_Section):
    secret_key: Optional[str] = Field(None, description="Server secret key file (from `gspo-async keys`).")
    authorized_clients: Optional[str] = Field(None, description="Directory of authorised client public key files.")


class CurveClientConfig(_Section):
    secret_key: Optional[str] = Field(None, description="Client secret key file.")
    server_public_key: Optional[str] = Field(None, description="Server public key file.")


class WeightSyncConfig(_Section):
    bucket_mb: float = Field(64.0, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    exclude_s: float = Field(60.0, ge=0, description="An actor that failed a broadcast (never got ready or never "
                             "acknowledged) is left out of broadcasts for a while, so one broken receiver cannot "
                             "stall the fleet's weights: timeout_s after a first failure, doubling up to exclude_s "
                             "(0 = never leave anyone out).")
    cohort_size: int = Field(8, ge=0, description="Actors per broadcast process group: the fleet is split into "
                             "groups of at most this many, sent to one after another, so an actor's death or arrival "
                             "rebuilds only its own group while the others keep receiving. Each group costs the "
                             "learner one send of the weights per version (NCCL's broadcast is pipelined within a "
                             "group): larger groups send less, smaller ones stall fewer actors per death. 0 = one "
                             "group for the whole fleet.")
    join_wait_s: float = Field(5.0, ge=0, description="Actors that join get the weights at once in a small group of "
                               "their own; at the next rebuild a death forces, or after at most this long, they move "
                               "into the regular groups (cohort_size). 0 = at once, at the cost of a rebuild of a "
                               "group with room per arrival.")
    background: bool = Field(True, description="Broadcast on a thread of its own so that no training step waits "
                             "for one; costs one copy of the weights (broadcast dtype, learner device). false: "
                             "every step waits for its broadcast, as in a synchronous trainer.")
    max_version_lag: int = Field(1, ge=1, description="With background broadcasts, no training step starts while "
                                 "the learner's version is more than this many versions ahead of the newest one the "
                                 "fleet received: the step waits for the broadcast (weights/wait_s). Unbounded, a "
                                 "learner faster than its broadcasts leaves the actors generating with weights that "
                                 "are stale on arrival, and most of their groups are dropped as stale.")

    def resolve_backend(self, device: str) -> str:
        """The torch.distributed backend for a process whose tensors live on `device` (auto: NCCL on CUDA)."""
        if self.backend == "auto":
            return "nccl" if str(device).startswith("cuda") else "gloo"
        return self.backend


class CheckpointConfig(_Section):
    every: int = Field(50, ge=0, description="Save every N steps (0 = only at the end).")
    keep: int = Field(2, ge=1)


class DeepSpeedConfig(_Section):
    zero_stage: Literal[1, 2, 3] = 2
    extra: dict[str, Any] = Field(default_factory=dict, description="Merged into the generated DeepSpeed config.")


class LearnerConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address. Non-loopback requires CURVE keys or insecure: true.")
    port: int = Field(5555, ge=0, le=65535, description="Base port: control/rollouts; weight store = port+1.")
    weight_store_port: Optional[int] = Field(None, description="Defaults to port+1 (0 = pick a free port).")
    advertise_host: Optional[str] = Field(None, description="Address actors use for the weight store (default: host).")
    insecure: bool = False
    curve: CurveServerConfig = Field(default_factory=CurveServerConfig)
    engine: Literal["torch", "deepspeed"] = "torch"
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    precision: Literal["mixed", "pure"] = Field(
        "mixed", description="mixed: fp32 master weights and optimiser state, forward/backward autocast to "
        "model.dtype (fp16 with loss scaling). pure: weights and optimiser state in model.dtype itself; with "
        "bfloat16/float16 an update below half an ulp of a weight is lost (lr 1e-6 barely moves bf16 weights), "
        "so it is only for comparisons.")
    device: str = "cpu"
    total_steps: int = Field(100, ge=0)
    eval_every: int = Field(10, ge=0, description="Held-out eval every N steps (0 = never).")
    eval_max_new_tokens: Optional[int] = None
    eval_on: Literal["learner", "fleet"] = Field(
        "learner", description="Where held-out evaluation runs: learner (transformers generate on the learner, "
        "training pauses; for single-process runs) or fleet (evaluation leases served by the actors between their "
        "training batches; the learner records the results by version and keeps training).")
    eval_n: int = Field(1, ge=1, description="Responses per eval prompt; eval/pass_at_k uses k = eval_n. On the "
                        "fleet at most num_return_sequences_in_group.")
    eval_temperature: float = Field(0.0, ge=0, description="Evaluation sampling: 0 = greedy, else this temperature "
                                    "(top_p 1, top_k 0).")
    lease_timeout_s: float = Field(120.0, gt=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_timeout_s: float = Field(10.0, gt=0)
    max_buffered_groups: Optional[int] = Field(None, description="Default: 4 * rollout_batch_size.")
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    threads: int = Field(1, ge=1, description="torch threads in the learner process.")
    ledger: bool = Field(True, description="Record how every prompt ended (trained at which step, or dropped and "
                         "why) in run_dir/ledger.jsonl (learner/ledger.py).")


class VLLMConfig(_Section):
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = "bfloat16"
    enforce_eager: bool = False
    update_mode: Literal["keep", "abort"] = Field(
        "keep", description="In-flight requests at a weight update: keep their KV cache, or abort and re-prefill."
    )
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    weight_transport: Literal["auto", "ipc", "host", "nccl"] = Field(
        "auto", description="How received weights reach vLLM's workers: auto (ipc when they are on this actor's GPU "
        "and tensor_parallel_size is 1, else host), ipc (CUDA IPC handles), host (bytes through the worker RPC), "
        "nccl (experimental: vLLM's own NCCL group, not yet driven by the actor loop; see docs/vllm.md).")
    max_model_len: Optional[int] = None


class ActorConfig(_Section):
    engine: Literal["hf", "vllm", "simulated"] = Field(
        "hf", description="hf (transformers), vllm (GPU), simulated (benchmarks)")
    simulated: dict[str, Any] = Field(default_factory=dict, description="Length and cost model of the simulated "
                                      "engine (fields of engines/simulated.py SimulationSettings).")
    device: str = "cpu"
    prompts_per_lease: int = Field(4, ge=1, description="Prompts asked for per lease request (one generation batch).")
    threads: int = Field(1, ge=1)
    seed: int = 0
    curve: CurveClientConfig = Field(default_factory=CurveClientConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class LocalConfig(_Section):
    num_actors: int = Field(2, ge=0, description="Actors started by `gspo-async local`.")


class TelemetryConfig(_Section):
    prometheus_port: Optional[int] = Field(None, description="Learner's Prometheus port (None = off, 0 = free port).")
    dashboard_port: Optional[int] = Field(None, description="Learner serves the live dashboard here (None = off).")
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "gspo-async"
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    log_every_s: float = Field(2.0, gt=0)


# --------------------------------------------------------------------------------------------------------------
# The top level: ROLL's GSPO keys plus the sections above
# --------------------------------------------------------------------------------------------------------------

# Clip ranges when the user sets none: the GSPO paper's for the sequence ratio, the paper's GRPO baseline otherwise.
DEFAULT_CLIP = {"seq": (3e-4, 4e-4), "token": (0.2, 0.27)}


class Config(_Section):
    # --- GSPO (seed keys, ROLL names and semantics) ---
    adv_estimator: Literal[ADV_ESTIMATORS] = "grpo"  # type: ignore[valid-type]
    importance_sampling: Literal[IMPORTANCE_SAMPLING] = "seq"  # type: ignore[valid-type]
    rollout_batch_size: int = Field(64, ge=1, description="Prompts (groups) per training step.")
    num_return_sequences_in_group: int = Field(8, ge=1, description="Responses per prompt (G).")
    prompt_length: int = Field(2048, ge=1, description="Max prompt tokens.")
    response_length: int = Field(4096, ge=1, description="Max response tokens.")
    # --- PPO ---
    ppo_epochs: int = Field(1, ge=1)
    use_kl_loss: bool = False
    kl_loss_coef: float = Field(0.0, ge=0)
    loss_agg_mode: Literal[LOSS_AGG_MODES] = "seq-mean-token-mean"  # type: ignore[valid-type]
    loss_agg_norm_length: Optional[int] = Field(None, description="T of seq-mean-token-sum-norm; default response_length.")
    # --- advantage ---
    whiten_advantages: bool = False
    advantage_clip: Optional[float] = Field(None, gt=0)
    dual_clip_loss: bool = False
    dual_clip_c: float = Field(3.0, gt=1, description="Dual-clip constant c (> 1), negative advantages only.")
    # --- clip ---
    pg_clip: Optional[float] = Field(None, gt=0, description="Symmetric clip; overrides the defaults of low/high.")
    pg_clip_low: Optional[float] = Field(None, gt=0, description="Default 3e-4 (seq) / 0.2 (token).")
    pg_clip_high: Optional[float] = Field(None, gt=0, description="Default 4e-4 (seq) / 0.27 (token).")
    log_ratio_clamp: float = Field(10.0, gt=0, description="Guard on log s_i so exp never overflows.")
    reward_clip: Optional[float] = Field(None, gt=0)
    # --- normalize ---
    reward_norm: Literal[REWARD_NORMS] = None  # type: ignore[valid-type]
    reward_shift: bool = False
    reward_scale: bool = False
    # --- reward ---
    add_token_level_kl: bool = False
    token_level_kl_coef: float = Field(0.0, ge=0, description="beta of add_token_level_kl.")
    # --- system ---
    seed: int = 0
    run_dir: str = "runs/latest"
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig)
    filter_groups: FilterGroupsConfig = Field(default_factory=FilterGroupsConfig)
    mask_truncated_responses: bool = Field(False, description="Responses cut at response_length (finish reason "
                                           "'length') contribute no token to the loss; their rewards still count in "
                                           "the group's mean and std.")
    overlong_penalty: OverlongPenaltyConfig = Field(default_factory=OverlongPenaltyConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    actor: ActorConfig = Field(default_factory=ActorConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _check_consistency(self) -> "Config":
        if self.reward_shift and self.reward_scale:
            raise ValueError("reward_shift and reward_scale are exclusive: shift subtracts the mean only, scale "
                             "divides by the std only; set at most one (or neither for full normalisation)")
        if self.adv_estimator == "grpo" and self.reward_norm in ("batch", "running"):
            raise ValueError(f"adv_estimator: grpo normalises rewards per group; reward_norm: {self.reward_norm} "
                             "conflicts with it (use reward_norm: null or group, or adv_estimator: reinforce)")
        if (self.reward_shift or self.reward_scale) and self.reward_norm is None and self.adv_estimator != "grpo":
            raise ValueError("reward_shift / reward_scale modify a normalisation: set reward_norm (batch, group or "
                             "running) too, or leave them false")
        if self.learner.precision == "pure" and self.model.dtype != "float32":
            if self.learner.engine == "deepspeed":
                raise ValueError("learner.precision: pure is for the torch engine only: DeepSpeed always keeps fp32 "
                                 "master weights for bfloat16/float16 (set learner.precision: mixed)")
            warnings.warn(f"learner.precision: pure trains {self.model.dtype} weights without fp32 master weights: "
                          "updates below half an ulp of a weight are lost (an Adam step of ~lr=1e-6 leaves most "
                          "bf16 weights unchanged); use learner.precision: mixed to train", ConfigWarning,
                          stacklevel=2)
        if self.filter_groups.enabled and self.num_return_sequences_in_group < 2:
            raise ValueError("filter_groups.enabled needs num_return_sequences_in_group >= 2: one response always has "
                             "a constant reward, so every group would be filtered")
        if self.overlong_penalty.enabled and self.overlong_penalty.buffer_length > self.response_length:
            raise ValueError(f"overlong_penalty.buffer_length={self.overlong_penalty.buffer_length} exceeds "
                             f"response_length={self.response_length}: the ramp must start inside the budget")
        budget = self.optim.max_tokens_per_micro_batch
        if budget is not None and budget < self.prompt_length + self.response_length:
            raise ValueError(f"optim.max_tokens_per_micro_batch={budget} is below prompt_length + response_length = "
                             f"{self.prompt_length + self.response_length}: the longest sequence would not fit; "
                             "raise the budget (or leave it null for fixed micro_batch_size)")
        if self.learner.eval_on == "fleet" and (self.learner.eval_max_new_tokens or 0) > self.response_length:
            raise ValueError(f"learner.eval_max_new_tokens={self.learner.eval_max_new_tokens} exceeds response_length="
                             f"{self.response_length}: the learner refuses longer responses from actors; lower it")
        if self.learner.eval_on == "fleet" and self.learner.eval_n > self.num_return_sequences_in_group:
            raise ValueError(f"learner.eval_n={self.learner.eval_n} exceeds num_return_sequences_in_group="
                             f"{self.num_return_sequences_in_group}: a group on the wire holds at most G responses; "
                             "lower learner.eval_n (or evaluate on the learner: learner.eval_on: learner)")
        if self.off_policy.rejection and self.off_policy.rejection.low >= self.off_policy.rejection.high:
            raise ValueError("off_policy.rejection.low must be below off_policy.rejection.high")
        if self.use_kl_loss and self.kl_loss_coef == 0:
            warnings.warn("use_kl_loss is true but kl_loss_coef is 0: the KL term has no effect", ConfigWarning,
                          stacklevel=2)
        return self

    # ----- resolved values (what the trainer uses) -----
    @property
    def clip_range(self) -> tuple[float, float]:
        """(eps_low, eps_high): explicit keys win over pg_clip, which wins over the per-mode defaults."""
        low, high = DEFAULT_CLIP[self.importance_sampling]
        if self.pg_clip is not None:
            low = high = self.pg_clip
        return (self.pg_clip_low if self.pg_clip_low is not None else low,
                self.pg_clip_high if self.pg_clip_high is not None else high)

    @property
    def groups_per_step(self) -> int:
        return self.rollout_batch_size

    @property
    def max_buffered_groups(self) -> int:
        return self.learner.max_buffered_groups or 4 * self.rollout_batch_size

    @property
    def weight_store_port(self) -> int:
        if self.learner.weight_store_port is not None:
            return self.learner.weight_store_port
        return self.learner.port + 1 if self.learner.port else 0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------------------
# Loading with line numbers, overrides and helpful errors
# --------------------------------------------------------------------------------------------------------------


def _yaml_with_lines(text: str, source: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse YAML and return (data, {key path: 1-based line}) so errors can point at the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*path, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    if node is not None:
        walk(node, ())
    data = yaml.safe_load(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data, lines


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. learner.port=6000)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML scalars) to a raw config mapping."""
    for item in overrides:
        parts, value = _parse_override(item)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _fields_at(path: tuple[Any, ...]) -> dict[str, Any]:
    """The pydantic fields of the section found at `path` (empty if path is not a section)."""
    model: Any = Config
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return {}
        ann = field.annotation
        # Optional[Section] -> Section
        for cand in getattr(ann, "__args__", ()) or (ann,):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                ann = cand
                break
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return {}
        model = ann
    return model.model_fields


def _format_errors(err: ValidationError, lines: dict[tuple[str, ...], int], source: str) -> str:
    messages = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) or "(top level)"
        line = lines.get(loc)
        where = f"{source}:{line}" if line else source
        if e["type"] == "extra_forbidden":
            valid = list(_fields_at(loc[:-1]))
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join((*loc[:-1], close[0]))!r}?" if close else \
                f"valid keys here: {', '.join(valid)}"
            messages.append(f"{where}: unknown key {dotted!r}; {hint}")
        elif e["type"] in ("literal_error", "enum"):
            allowed = e.get("ctx", {}).get("expected", "")
            messages.append(f"{where}: {dotted} = {e.get('input')!r} is not allowed; allowed values: {allowed}")
        elif not loc:  # a cross-field check: the message says it all
            messages.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            messages.append(f"{where}: {dotted}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(messages)


def _warn_semantics(cfg: Config, source: str) -> None:
    if cfg.importance_sampling == "seq" and cfg.loss_agg_mode == "seq-mean-token-sum":
        warnings.warn(
            f"{source}: GSPO (importance_sampling: seq) with loss_agg_mode: seq-mean-token-sum makes the loss "
            "scale with response length (every token of a sequence carries the same sequence-level term); the "
            "paper's choice is seq-mean-token-mean", ConfigWarning, stacklevel=3)
    if cfg.filter_groups.enabled and cfg.adv_estimator != "grpo":
        warnings.warn(
            f"{source}: filter_groups drops groups whose rewards are all equal because their group-normalised "
            f"advantage is zero; with adv_estimator: {cfg.adv_estimator} such groups still carry signal and are "
            "dropped anyway", ConfigWarning, stacklevel=3)


def config_from_dict(data: dict[str, Any], *, source: str = "<config>",
                     lines: Optional[dict[tuple[str, ...], int]] = None) -> Config:
    """Validate a raw mapping into a :class:`Config`, raising :class:`ConfigError` with helpful messages."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, lines or {}, source)) from None
    _warn_semantics(cfg, source)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted ``key=value`` overrides."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist (pass a YAML file, e.g. configs/quickstart.yaml)")
        source = str(p)
        data, lines = _yaml_with_lines(p.read_text(), source)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with overrides)"
    return config_from_dict(data, source=source, lines=lines)
