#!/usr/bin/env bash
# Every benchmark that has its data, on a tower (encoder benchmarks) and/or a LLaVA checkpoint
# (generation benchmarks). A launcher for `python -m genfeedback eval`; the benchmarks come from
# eval's registry (`python -m eval benchmarks`), `--help` lists the flags.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
exec "$GF_PY" -m genfeedback eval "$@"
