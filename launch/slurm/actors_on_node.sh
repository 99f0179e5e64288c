#!/usr/bin/env bash
# One actor per GPU of this Slurm step (the entries of CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists),
# all against one learner. SIGTERM is passed on to every actor, which pushes what it generated and returns its
# leases before it exits.
#   launch/slurm/actors_on_node.sh HOST:PORT [key=value ...]     (run by train.sbatch and add_actors.sbatch)
set -euo pipefail
learner="${1:?usage: launch/slurm/actors_on_node.sh HOST:PORT [key=value ...]}"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
else
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
fi
if [ "${#gpus[@]}" -eq 0 ]; then
  echo "[actors_on_node] no GPU visible on $(hostname -s): request GPUs for this step (srun --gpus-per-node=N)" >&2
  exit 1
fi
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
for gpu in "${gpus[@]}"; do
  CUDA_VISIBLE_DEVICES="$gpu" GSPO_ACTOR_ID="$(hostname -s)-gpu${gpu}-${SLURM_JOB_ID:-0}" \
    "$here/../actor.sh" "$learner" actor.device=cuda "$@" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do  # a trapped signal interrupts wait: keep waiting until each actor has exited
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
done
