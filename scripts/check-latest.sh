#!/usr/bin/env bash
# A maintainer's check, not part of CI (it would fail CI whenever some package releases): install
# genfeedback into a throwaway venv from pyproject.toml's ranges alone (no lock), run the fast tests there,
# and print every package whose newest allowed version differs from requirements/lock.txt. A green run
# says the pins can be refreshed (bash scripts/lock.sh --upgrade); a red one names what to cap, with a
# comment, in pyproject.toml.
# Usage: bash scripts/check-latest.sh [pytest args; default -m "not slow"]
set -uo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv" || exit 2
py="$work/venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; return "${PIPESTATUS[0]}"; }
echo "check-latest: resolving the newest releases pyproject.toml allows (torch stays on the machine's local pair)"
# torch and torchvision: the pair the lock constrains to (requirements/lock-constraints.txt); a newer
# torch is a multi-GB download and above the machines' cap.
torch_pins=$(grep -E '^(torch|torchvision)==' requirements/lock-constraints.txt | tr '\n' ' ')
# shellcheck disable=SC2086
quiet "$py" -m pip install -q $torch_pins || { echo "check-latest: torch install failed" >&2; exit 2; }
# A regular (non-editable) install, so the newest setuptools builds the wheel too.
quiet "$py" -m pip install -q ".[dev,eval]" || { echo "check-latest: the unpinned install failed (see above)" >&2; exit 2; }

echo
echo "check-latest: packages whose newest allowed version differs from $LOCK"
"$py" - "$LOCK" <<'EOF'
import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
locked = {}
for line in open(sys.argv[1]):
    if "==" in line and not line.startswith("#"):
        name, version = line.strip().split("==")
        locked[norm(name)] = version.split(";")[0].strip()
installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
installed.pop("genfeedback", None)
installed.pop("pip", None)
rows = [(n, locked.get(n, "-"), installed.get(n, "-")) for n in sorted(set(locked) | set(installed))
        if locked.get(n) != installed.get(n)]
width = max([len(n) for n, _, _ in rows] + [7])
print(f"{'package':<{width}}  {'lock':<16} newest")
for name, lock, new in rows:
    print(f"{name:<{width}}  {lock:<16} {new}")
print(f"{len(rows)} of {len(set(locked) | set(installed))} packages differ")
EOF

echo
echo "check-latest: the fast tests against the newest releases"
[[ $# -gt 0 ]] || set -- -m "not slow"
# GF_PYTHON: the shell entry points under test run this venv's python, not the checkout's .venv.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled GF_PYTHON="$py" \
  PATH="$work/venv/bin:$PATH" "$py" -m pytest -p no:cacheprovider -q "$@"
status=$?
if [[ $status -eq 0 ]]; then
  echo "check-latest: the newest releases pass; refresh the lock with: bash scripts/lock.sh --upgrade"
else
  echo "check-latest: the newest releases FAIL (pytest exit $status): cap the package that broke in pyproject.toml, with a comment saying why" >&2
fi
exit $status
