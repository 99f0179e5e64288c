#!/usr/bin/env bash
# Start the learner.
#   launch/learner.sh [CONFIG] [key=value ...]
# Environment (all optional):
#   GSPO_CONFIG        config file when no CONFIG argument is given (default configs/quickstart.yaml)
#   GSPO_HOST          bind address (learner.host); non-loopback needs CURVE keys or GSPO_INSECURE=1
#   GSPO_PORT          base port (learner.port); the weight store listens on GSPO_PORT+1
#   GSPO_RUN_DIR       run directory (metrics, checkpoints)
#   GSPO_RESUME=1      continue from the newest checkpoint in the run directory
#   GSPO_INSECURE=1    allow a non-loopback bind without CURVE (trusted networks only)
#   GSPO_LAUNCHER      empty (one process) or a multi-rank launcher for learner.engine=deepspeed, e.g.
#                      "torchrun --standalone --nproc_per_node=4" or "deepspeed --num_gpus 4"
#                      (the module is passed with --module; deepspeed also gets --no_local_rank)
set -euo pipefail
config="${1:-${GSPO_CONFIG:-configs/quickstart.yaml}}"
[ $# -gt 0 ] && shift
args=("$@")
[ -n "${GSPO_HOST:-}" ] && args+=("learner.host=${GSPO_HOST}")
[ -n "${GSPO_PORT:-}" ] && args+=("learner.port=${GSPO_PORT}")
[ -n "${GSPO_RUN_DIR:-}" ] && args+=("run_dir=${GSPO_RUN_DIR}")
[ "${GSPO_INSECURE:-0}" = 1 ] && args+=("learner.insecure=true")
flags=()
[ "${GSPO_RESUME:-0}" = 1 ] && flags+=("--resume")
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
