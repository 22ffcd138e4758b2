# Shared by the genfeedback shell entry points: the Python to use, the launcher, and small
# helpers for flag parsing. Sourced, never run.

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

die() { echo "error: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# need_value FLAG "$#" : the flag must be followed by a value
need_value() { [[ "$2" -ge 2 ]] || die "$1 needs a value (see --help)"; }

require_path() {  # require_path WHAT PATH
  [[ -e "$2" ]] || die "$1 not found: $2"
}

# launch NPROC HOSTFILE LAUNCHER MODULE ARGS... : run `python -m MODULE ARGS` in NPROC processes.
# One process runs plainly; more use torchrun (single node, CPU or GPU) or the deepspeed launcher
# (chosen explicitly, or implied by a hostfile for multi-node).
launch() {
  local nproc="$1" hostfile="$2" launcher="$3" module="$4"; shift 4
  if [[ -n "$hostfile" ]]; then
    launcher=deepspeed
  fi
  if [[ "$nproc" -le 1 && -z "$hostfile" ]]; then
    log "$GF_PY -m $module $*"
    "$GF_PY" -m "$module" "$@"
  elif [[ "$launcher" == deepspeed ]]; then
    local extra=()
    [[ -n "$hostfile" ]] && extra+=(--hostfile "$hostfile")
    log "deepspeed --num_gpus $nproc ${extra[*]} --module $module $*"
    "$(dirname "$GF_PY")/deepspeed" --num_gpus "$nproc" "${extra[@]}" --module "$module" "$@"
  else
    log "torchrun --nproc_per_node $nproc -m $module $*"
    "$GF_PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m "$module" "$@"
  fi
}
