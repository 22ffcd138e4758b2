#!/usr/bin/env bash
# Create .venv (if missing) and install genfeedback with everything the pipelines and the tests need,
# exactly as pinned in requirements/lock.txt (every package, transitive ones included; regenerate it with
# scripts/lock.sh, never by hand). Idempotent: a second run only checks. The .venv stamp carries the hash
# of pyproject.toml and the lock, so a changed lock re-syncs the venv: pinned versions are installed and
# packages the lock no longer lists are removed.
# Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock.txt
PY=${PYTHON:-python3}
die() { echo "setup.sh: $*" >&2; exit 2; }
# pip, run quietly. Where the machine's pip config lists local indexes, pip warns once per package that
# a local index has no folder for it; that line says nothing about this install, so it is dropped.
pip_quiet() {
  python -m pip "$@" -q 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

# The lock is resolved for CPython 3.11 on x86-64 Linux (scripts/lock.sh); elsewhere its pins, torch's
# CUDA libraries above all, do not apply.
target=$("$PY" -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{platform.system()}-{platform.machine()}")') \
  || die "cannot run $PY: set PYTHON=/path/to/python3.11"
[[ "$target" == "cpython3.11-Linux-x86_64" ]] \
  || die "$LOCK is for cpython3.11-Linux-x86_64, not $target: set PYTHON=/path/to/python3.11, or install unpinned with 'pip install -e \".[dev,eval]\"' (see scripts/check-latest.sh)"

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=".venv/.genfeedback-installed-$(cat pyproject.toml "$LOCK" | sha1sum | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  rm -f .venv/.genfeedback-installed-*
  # --no-deps: the lock is complete, so nothing outside it can slip in; `pip check` below proves it.
  # torch and torchvision (and most CUDA libraries) come from the machine's local files via pip's config.
  pip_quiet install --no-deps -r "$LOCK"
  pip_quiet install --no-deps --no-build-isolation -e .
  # Remove what an earlier lock installed and this one does not list (pip itself excepted).
  stale=$(python - "$LOCK" <<'EOF'
import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
locked = {norm(line.split("==")[0]) for line in open(sys.argv[1]) if "==" in line and not line.startswith("#")}
keep = locked | {"pip", "genfeedback"}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in distributions()} - keep)))
EOF
)
  if [[ -n "$stale" ]]; then
    echo "setup.sh: removing packages the lock no longer lists: $stale"
    # shellcheck disable=SC2086
    pip_quiet uninstall -y $stale
  fi
  python -m pip check >/dev/null || { python -m pip check; die "the installed packages are inconsistent: regenerate the lock (bash scripts/lock.sh)"; }
  touch "$stamp"
fi
python -c "import llava_plugin, enhance, mllm_train, eval" >/dev/null
echo "genfeedback environment ready: $(pwd)/.venv (lock $(sha1sum "$LOCK" | cut -c1-12))"
