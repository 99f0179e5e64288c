#!/usr/bin/env bash
# On the GPU machine: join the carried parts (.whl/vllm/part-*), check them, install vLLM without any index.
#   bash tools/gpu/install.sh            (after every part has been carried; see tools/gpu/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${SRC:-.whl/vllm}
VLLM_VERSION=${VLLM_VERSION:-0.24.0}
(cd "$SRC" && sha256sum -c SHA256SUMS)
rm -rf /tmp/vllm-wheels && mkdir -p /tmp/vllm-wheels
cat "$SRC"/part-* | tar xf - -C /tmp/vllm-wheels
python3 -m pip install -q --no-index --no-cache-dir --find-links /tmp/vllm-wheels/wheels "vllm==${VLLM_VERSION}"
python3 - <<'PY'
import torch, vllm
print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
