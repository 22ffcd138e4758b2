# Shared by the genfeedback shell entry points: the Python to use and the environment every stage
# runs in. Sourced, never run.

GF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The python to run: GF_PYTHON if set (scripts/check-latest.sh points it at its throwaway venv), else the
# project's venv when there is one (scripts/setup.sh creates it), else whatever python is active.
if [[ -n "${GF_PYTHON:-}" ]]; then
  GF_PY="$GF_PYTHON"
elif [[ -x "$GF_ROOT/.venv/bin/python" ]]; then
  GF_PY="$GF_ROOT/.venv/bin/python"
else
  GF_PY="${PYTHON:-python3}"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false WANDB_MODE="${WANDB_MODE:-disabled}"
