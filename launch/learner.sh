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
#   GSPO_LAUNCHER      empty (one process) or e.g. "torchrun --nproc_per_node=4" / "deepspeed" for multi-rank
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
  cmd=(${GSPO_LAUNCHER} -m gspo_async learner "$config" "${args[@]}" "${flags[@]}")
else
  cmd=(gspo-async learner "$config" "${args[@]}" "${flags[@]}")
fi
echo "[launch/learner.sh] ${cmd[*]}" >&2
exec "${cmd[@]}"
