#!/usr/bin/env bash
# The first node of train.sbatch: the learner on the first N GPUs of this step, one actor on each of the others.
# GPUs are bound explicitly (CUDA_VISIBLE_DEVICES of each process, from this one step's GPUs), so the learner and
# an actor never share one. The step ends with the learner; its actors then get SIGTERM and push what they have.
#   launch/slurm/learner_node.sh N HOST:PORT CONFIG [learner key=value ...] [-- actor key=value ...]
set -euo pipefail
usage="usage: launch/slurm/learner_node.sh N_LEARNER_GPUS HOST:PORT CONFIG [learner key=value ...] [-- actor key=value ...]"
n="${1:?$usage}"
learner="${2:?$usage}"
config="${3:?$usage}"
shift 3
learner_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do learner_args+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the rest are the actors' overrides
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
else
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
fi
if [ "${#gpus[@]}" -lt "$n" ]; then
  echo "[learner_node] $n learner GPU(s) asked for, ${#gpus[@]} visible on $(hostname -s): request the node's GPUs" \
       "for this step (srun --gpus-per-node=G) or lower GSPO_LEARNER_GPUS" >&2
  exit 1
fi
learner_gpus=$(IFS=,; echo "${gpus[*]:0:$n}")
actor_gpus=$(IFS=,; echo "${gpus[*]:$n}")
echo "[learner_node] $(hostname -s): learner on GPU(s) $learner_gpus, actors on ${actor_gpus:-none}" >&2
CUDA_VISIBLE_DEVICES="$learner_gpus" "$here/../learner.sh" "$config" "${learner_args[@]}" &
learner_pid=$!
actors_pid=""
if [ -n "$actor_gpus" ]; then
  CUDA_VISIBLE_DEVICES="$actor_gpus" "$here/actors_on_node.sh" "$learner" "$@" &
  actors_pid=$!
fi
trap 'kill -TERM "$learner_pid" $actors_pid 2>/dev/null || true' TERM INT
status=0
wait "$learner_pid" || status=$?
while kill -0 "$learner_pid" 2>/dev/null; do  # a trapped signal interrupts wait: wait for the learner's own end
  status=0
  wait "$learner_pid" || status=$?
done
if [ -n "$actors_pid" ]; then
  kill -TERM "$actors_pid" 2>/dev/null || true
  wait "$actors_pid" || true
fi
exit "$status"
