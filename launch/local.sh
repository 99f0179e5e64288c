#!/usr/bin/env bash
# One learner and N actors on this machine (the quickstart).
#   launch/local.sh [CONFIG] [key=value ...]      e.g. launch/local.sh configs/quickstart.yaml local.num_actors=3
set -euo pipefail
config="${1:-configs/quickstart.yaml}"
[ $# -gt 0 ] && shift
cmd=(gspo-async local "$config" "$@")
echo "[launch/local.sh] ${cmd[*]}" >&2
exec "${cmd[@]}"
