#!/usr/bin/env bash
# Install gspo-async with its test extras (torch pinned to the CPU wheel) and run the whole test suite.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints-cpu.txt -e '.[test]'
# The dashboard test drives a real headless Chromium from the system's package manager.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest -q "$@"
