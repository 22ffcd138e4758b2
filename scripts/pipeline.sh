#!/usr/bin/env bash
# The whole chain: enhance the tower with each method -> LLaVA-1.5 on the base tower and on every
# enhanced tower -> every benchmark -> one comparison table and plot. A launcher for
# `python -m genfeedback run`: recipes live in genfeedback/configs (toy, paper, paper-13b) and
# world/configs (world: the quick shapes world, one seed in ~20 min on 2 cores, study-quick.yaml;
# world-full: the full study, study.yaml); `--help` lists the flags. With no arguments: the toy recipe
# on the tiny zoo.
# Only --no-setup is this script's own: without it, scripts/setup.sh installs the venv first.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
setup=true args=()
for arg in "$@"; do
  case "$arg" in
    --no-setup) setup=false ;;
    -h|--help) setup=false; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
$setup && bash "$HERE/setup.sh"
source "$HERE/_common.sh"  # after setup.sh: picks up the venv it may just have created
exec "$GF_PY" -m genfeedback run "${args[@]}"
