#!/usr/bin/env bash
# Start the learner.
#   launch/learner.sh [CONFIG] [key=value ...]
# Environment (all optional):
#   GSPO_CONFIG        config file when no CONFIG argument is given (default configs/quickstart.yaml)
#   GSPO_HOST          bind address (learner.host); non-loopback needs CURVE keys or GSPO_INSECURE=1
#   GSPO_ADVERTISE_HOST the address actors reach this node at (learner.advertise_host); needed with GSPO_HOST=0.0.0.0
#   GSPO_PORT          base port (learner.port); the weight store listens on GSPO_PORT+1
#   GSPO_SERVER_KEY    the learner's CurveZMQ secret key (learner.curve.secret_key), e.g. keys/server.key_secret
#   GSPO_AUTHORIZED_CLIENTS  directory of accepted client public keys (default: authorized_clients/ beside the key)
#   GSPO_RUN_DIR       run directory (metrics, checkpoints)
#   GSPO_RESUME=1      continue the run in the run directory (its saved settings, overrides on top); refused when
#                      there is none. GSPO_RESUME=auto: the same, but a first start begins a fresh run
#   GSPO_INSECURE=1    allow a non-loopback bind without CURVE (trusted networks only)
#   GSPO_LAUNCHER      empty (one process) or a multi-rank launcher, e.g. "torchrun --standalone
#                      --nproc_per_node=4" or "deepspeed --num_gpus 4": the ranks shard one learner
#                      (learner.engine=deepspeed is set; needs pip install 'gspo-async[deepspeed]'); the module
#                      is passed with --module; deepspeed also gets --no_local_rank
set -euo pipefail
config="${1:-${GSPO_CONFIG:-configs/quickstart.yaml}}"
[ $# -gt 0 ] && shift
args=()
# several ranks shard one learner; an explicit learner.engine=... among the arguments still wins (it comes later)
[ -n "${GSPO_LAUNCHER:-}" ] && args+=("learner.engine=deepspeed")
[ -n "${GSPO_HOST:-}" ] && args+=("learner.host=${GSPO_HOST}")
[ -n "${GSPO_ADVERTISE_HOST:-}" ] && args+=("learner.advertise_host=${GSPO_ADVERTISE_HOST}")
[ -n "${GSPO_PORT:-}" ] && args+=("learner.port=${GSPO_PORT}")
[ -n "${GSPO_SERVER_KEY:-}" ] && args+=("learner.curve.secret_key=${GSPO_SERVER_KEY}")
[ -n "${GSPO_AUTHORIZED_CLIENTS:-}" ] && args+=("learner.curve.authorized_clients=${GSPO_AUTHORIZED_CLIENTS}")
[ -n "${GSPO_RUN_DIR:-}" ] && args+=("run_dir=${GSPO_RUN_DIR}")
[ "${GSPO_INSECURE:-0}" = 1 ] && args+=("learner.insecure=true")
args+=("$@")
flags=()
case "${GSPO_RESUME:-0}" in
  1) flags+=("--resume") ;;
  auto) flags+=("--resume" "--start-if-missing") ;;
  0|"") ;;
  *) echo "launch/learner.sh: GSPO_RESUME must be 1, auto or 0, not '${GSPO_RESUME}'" >&2; exit 2 ;;
esac
if [ -n "${GSPO_LAUNCHER:-}" ]; then
  read -ra launcher <<< "$GSPO_LAUNCHER"
  # deepspeed's launcher appends --local_rank=N to the program's arguments unless told not to
  if [ "$(basename "${launcher[0]}")" = deepspeed ] && [[ " ${launcher[*]} " != *" --no_local_rank "* ]]; then
    launcher+=(--no_local_rank)
  fi
  cmd=("${launcher[@]}" --module gspo_async learner "${flags[@]}" "$config" "${args[@]}")
else
  cmd=(gspo-async learner "${flags[@]}" "$config" "${args[@]}")
fi
echo "[launch/learner.sh] ${cmd[*]}" >&2
exec "${cmd[@]}"
