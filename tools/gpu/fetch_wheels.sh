#!/usr/bin/env bash
# Download vLLM and the wheels it needs that the GPU image lacks (CPython 3.12, x86_64), then cut them into parts
# small enough to carry to the GPU machine (the device tool carries at most 64 MiB per call).
# Run it where PyPI is reachable (this CPU machine will do). torch and its CUDA libraries, which the image has
# (image_packages.txt lists the image), are dropped; tools/gpu/measure_carry.py measures what remains.
#   VLLM_VERSION=0.24.0 bash tools/gpu/fetch_wheels.sh        -> .whl/vllm/part-00, part-01, ... (+ SHA256SUMS)
set -euo pipefail
cd "$(dirname "$0")/../.."
VLLM_VERSION=${VLLM_VERSION:-0.24.0}   # 0.24.0 pins torch 2.11.0, the GPU image's torch
DEST=${DEST:-.whl/vllm}
PART_MB=${PART_MB:-60}
grep -qx '/.whl/' .gitignore || echo "note: keep .whl/ ignored by git (it is in .gitignore)" >&2
rm -rf "$DEST" && mkdir -p "$DEST/wheels"
python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
  -d "$DEST/wheels" "vllm==${VLLM_VERSION}"
# Drop what the image already has. Always: torch and what torch 2.11.0 pins (triton and the image's nvidia-* /
# cuda-* libraries), which are the image's own versions. With DROP_IMAGE=1 also every other package the image lists (smaller, but pip
# fails offline if vLLM needs another version of one of them, e.g. of transformers or numpy).
python3 - "$DEST/wheels" tools/gpu/image_packages.txt "${DROP_IMAGE:-0}" <<'PY'
import pathlib, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s.strip().lower())
image = {norm(l) for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
for whl in pathlib.Path(sys.argv[1]).glob("*.whl"):
    name = norm(whl.name.split("-")[0])
    pinned_by_torch = name in ("torch", "triton") or (re.fullmatch(r"nvidia-.*|cuda-.*", name) and name in image)
    if pinned_by_torch or (sys.argv[3] == "1" and name in image):
        whl.unlink()
kept = sorted(pathlib.Path(sys.argv[1]).glob("*.whl"))
print(f"{len(kept)} wheels to carry, {sum(w.stat().st_size for w in kept) / 2**20:.0f} MiB")
PY
tar cf - -C "$DEST" wheels | split -d -a 2 -b "${PART_MB}m" - "$DEST/part-"
rm -rf "$DEST/wheels"
(cd "$DEST" && sha256sum part-* > SHA256SUMS)
ls -la "$DEST"
