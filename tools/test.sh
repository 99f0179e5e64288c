#!/usr/bin/env bash
# Install gspo-async with its test extras (torch pinned to the CPU wheel) and run the test suite.
#   bash tools/test.sh                  everything (what CI runs)
#   bash tools/test.sh -m "not slow"    the unit tier: no test starts a process
# Further arguments go to pytest (a path, -k, -x, -n 0 to run in one process). GSPO_TEST_WORKERS sets the number
# of pytest-xdist workers (default: auto, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints-cpu.txt -e '.[test]'
# The dashboard tests drive a real headless Chromium and run the page's chart code in Node, both from the system's
# package manager.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "warning: could not install ${missing[*]}; the browser and chart tests will be skipped (a failure" \
            "under GSPO_REQUIRE_BROWSER=1 / GSPO_REQUIRE_NO_SKIPS=1, as in .ci/run)" >&2
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
  WANDB_MODE=offline WANDB_SILENT=true
# Process-starting tests run in two xdist groups (see tests/conftest.py) so they never oversubscribe the cores;
# the slowest 15 tests are printed so that a runtime regression shows in the CI log.
exec python -m pytest -q -n "${GSPO_TEST_WORKERS:-auto}" --dist loadgroup --durations=15 "$@"
