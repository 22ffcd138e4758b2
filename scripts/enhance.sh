#!/usr/bin/env bash
# Post-train a vision tower with generative feedback: a launcher for `python -m enhance train`
# (through `python -m genfeedback enhance`, which checks the whole run and then starts the processes).
# Recipes live in enhance/configs and method names in the method registry; `--help` lists the flags.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
exec "$GF_PY" -m genfeedback enhance "$@"
