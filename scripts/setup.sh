#!/usr/bin/env bash
# Create .venv (if missing) and install genfeedback with everything the toy pipeline and the
# tests need. Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--no-eval]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="dev,eval"
[[ "${1:-}" == "--no-eval" ]] && extras="dev"
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=".venv/.genfeedback-installed-$(sha1sum pyproject.toml | cut -c1-12)-$extras"
if [[ ! -f "$stamp" ]]; then
  python -m pip install -q --upgrade pip
  # open_clip needs torchvision; this pair is the newest the machine's pip constraint allows.
  python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
python -c "import llava_plugin, enhance, mllm_train, eval" >/dev/null
echo "genfeedback environment ready: $(pwd)/.venv"
