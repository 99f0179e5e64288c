#!/usr/bin/env bash
# The second GPU call, only after the smoke test passed: the throughput benchmark of one vLLM actor (tokens/s of
# VLLMEngine against the same requests sent to bare vLLM, update cost per transport, pause per in-flight update)
# -> $OUT/vllm_bench.json and vllm_bench.md.
#   bash tools/gpu/bench.sh [shape]      shape: qwen2.5-1.5b (default) or qwen2.5-7b
# It refuses to run until tools/bench/results/vllm_smoke.json holds a passing GPU smoke run (tools/gpu/smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
SMOKE=${SMOKE:-tools/bench/results/vllm_smoke.json}
OUT=${OUT:-tools/gpu/results}
python3 - "$SMOKE" <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
if not path.is_file():
    sys.exit(f"{path} is missing: run tools/gpu/smoke.sh on the GPU first and keep its JSON there")
r = json.loads(path.read_text())
if r.get("fake") or not r.get("all_ok"):
    sys.exit(f"{path} is not a passing GPU smoke run (fake={r.get('fake')}, all_ok={r.get('all_ok')}): fix the "
             "smoke test first")
PY
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 VLLM_WORKER_MULTIPROC_METHOD=spawn
python3 -c 'import vllm' 2>/dev/null || bash tools/gpu/install.sh
python3 tools/gpu/bench_vllm.py --shape "${1:-qwen2.5-1.5b}" --out "$OUT/vllm_bench.json" 2>&1 | tee "$OUT/vllm_bench.log"
