#!/usr/bin/env bash
# On the GPU machine, after install.sh: correctness checks, then the benchmark; results under $OUT (or results/).
#   bash tools/gpu/run_checks.sh [shape]     shape: qwen2.5-1.5b (default) or qwen2.5-7b
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-tools/gpu/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 VLLM_WORKER_MULTIPROC_METHOD=spawn
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 tools/gpu/check_vllm.py --out "$OUT/vllm_checks.json" 2>&1 | tee "$OUT/vllm_checks.log"
checks=${PIPESTATUS[0]}
python3 tools/gpu/bench_vllm.py --shape "${1:-qwen2.5-1.5b}" --out "$OUT/vllm_bench.json" 2>&1 | tee "$OUT/vllm_bench.log"
bench=${PIPESTATUS[0]}
echo "checks exit $checks, benchmark exit $bench"
exit $(( checks || bench ))
