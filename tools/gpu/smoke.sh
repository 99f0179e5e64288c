#!/usr/bin/env bash
# The first GPU call for the vLLM actor: install vLLM from the carried wheel parts when it is missing, then run
# tools/gpu/smoke_vllm.py (one actor on a small Qwen2, two in-flight weight updates in keep and abort modes, bf16
# log-prob parity against the learner) -> $OUT/vllm_smoke.json, which docs/benchmarks.md renders.
#
#   bash tools/gpu/smoke.sh --dry-run   anywhere: the steps, the files the GPU calls would carry, their total size
#   bash tools/gpu/smoke.sh             on the GPU machine, after the parts were carried (tools/gpu/README.md)
#
# Budget: 5 minutes of device time for the call that runs it, install included: install <= INSTALL_S, smoke <=
# SMOKE_S (each a hard limit: a step that runs over fails the smoke instead of eating the session's device time).
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${SRC:-.whl/vllm}
VLLM_VERSION=${VLLM_VERSION:-0.24.0}
INSTALL_S=${INSTALL_S:-120}
SMOKE_S=${SMOKE_S:-150}
CALL_MIB=${CALL_MIB:-64}  # what one device call may carry, working tree included
OUT=${OUT:-tools/gpu/results}

steps() {
  cat <<EOF
steps:
  1. nvidia-smi: the GPU, its driver (vLLM ${VLLM_VERSION}'s CUDA 13 wheels need R580+)
  2. python3 -c 'import vllm' or, within ${INSTALL_S} s: check ${SRC}/SHA256SUMS, join ${SRC}/part-*, pip install
     --no-index vllm==${VLLM_VERSION} (tools/gpu/install.sh)
  3. within ${SMOKE_S} s: PYTHONPATH=. python3 tools/gpu/smoke_vllm.py --out \$OUT/vllm_smoke.json
     (VLLMEngine on a random Qwen2, weights by apply_weights: first version, an update in keep mode and one in
     abort mode during generation; max and mean |logprob diff| against the learner in bf16)
  4. the JSON comes back; render it: cp it to tools/bench/results/vllm_smoke.json and run
     PYTHONPATH=. python tools/bench/report.py (docs/benchmarks.md, section "vLLM actor smoke test")
EOF
}

human() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

if [[ "${1:-}" == "--dry-run" ]]; then
  steps
  tree_bytes=$( (git ls-files -co --exclude-standard -z 2>/dev/null || true) \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  echo "working tree (travels with every call): $(human "$tree_bytes")"
  shopt -s nullglob
  parts=("$SRC"/part-*)
  if (( ${#parts[@]} == 0 )); then
    echo "files to carry: none fetched under $SRC (run: VLLM_VERSION=$VLLM_VERSION bash tools/gpu/fetch_wheels.sh)."
    # The sizes measured by tools/gpu/measure_carry.py (pip download --no-deps of each wheel the image lacks).
    MEASURED=${MEASURED:-tools/bench/results/vllm_carry.json}
    python3 - "$MEASURED" "$VLLM_VERSION" "$CALL_MIB" "$tree_bytes" <<'PY'
import json, pathlib, sys
path, version, call_mib, tree = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.loads(path.read_text()) if path.is_file() else None
if r is None or r["vllm_version"] != version:
    print(f"  Not measured for vLLM {version}: run python tools/gpu/measure_carry.py --version {version} (needs PyPI)")
    raise SystemExit(0)
mib = lambda b: f"{b / 2**20:.1f} MiB"
print(f"  measured {r['measured_at']} ({path}): vLLM {version}'s wheel {mib(r['vllm_wheel_bytes'])}; "
      f"{r['carried_packages']} wheels the image lacks, {r['carried_bytes']} bytes ({mib(r['carried_bytes'])})")
for name, w in list(r["carried"].items())[:6]:
    print(f"    {w['wheel']:<60} {mib(w['bytes'])}")
room = call_mib * 2**20 - tree
print(f"  device calls: at least {-(-r['carried_bytes'] // room)} carry calls of {mib(room)} each next to the "
      f"working tree, then this script; vLLM requires torch {r['vllm_requires_torch']}")
if r["conflicts"]:
    print(f"  unresolved by the per-package download: {'; '.join(f'{k}: {v}' for k, v in r['conflicts'].items())}")
print(f"  not measured: {r['not_measured']}")
PY
    exit 0
  fi
  total=0
  echo "files to carry:"
  for f in "${parts[@]}" "$SRC/SHA256SUMS"; do
    [[ -f "$f" ]] || { echo "  missing: $f (re-run fetch_wheels.sh)"; continue; }
    size=$(stat -c %s "$f")
    total=$((total + size))
    printf '  %-40s %12d bytes  %s\n' "$f" "$size" "$(human "$size")"
  done
  echo "total to carry: $total bytes ($(human "$total")) in ${#parts[@]} parts"
  room=$(( CALL_MIB * 1048576 - tree_bytes ))
  if (( room <= 0 )); then
    echo "the working tree alone fills a call: nothing can be carried" >&2
    exit 1
  fi
  largest=$(for f in "${parts[@]}"; do stat -c %s "$f"; done | sort -n | tail -1)
  if (( largest > room )); then
    echo "a part ($(human "$largest")) does not fit a call next to the working tree ($(human "$room") free):" \
         "re-cut with PART_MB smaller (fetch_wheels.sh)" >&2
    exit 1
  fi
  echo "device calls: ${#parts[@]} carry calls (one part each, machine kept warm between them), then this script"
  exit 0
fi

[[ $# -eq 0 ]] || { echo "usage: bash tools/gpu/smoke.sh [--dry-run]" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 VLLM_WORKER_MULTIPROC_METHOD=spawn
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if ! python3 -c 'import vllm' 2>/dev/null; then
  if ! compgen -G "$SRC/part-*" >/dev/null; then
    echo "vLLM is not installed and no parts are under $SRC: carry them first (tools/gpu/README.md)" >&2
    exit 2
  fi
  timeout "$INSTALL_S" bash tools/gpu/install.sh 2>&1 | tee "$OUT/vllm_install.log"
fi
echo "install done after $(( $(date +%s) - start )) s"
set +e
timeout "$SMOKE_S" python3 tools/gpu/smoke_vllm.py --out "$OUT/vllm_smoke.json" 2>&1 | tee "$OUT/vllm_smoke.log"
rc=${PIPESTATUS[0]}
set -e
echo "smoke exit $rc after $(( $(date +%s) - start )) s (124: over its ${SMOKE_S} s limit)"
exit "$rc"
