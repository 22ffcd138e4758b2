#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every package, transitive ones included, pinned for the environment the
# tests pass in (CPython 3.11 on x86-64 Linux, the machines setup.sh targets). The lock is written by uv's
# resolver from pyproject.toml's ranges and extras; never edit it by hand. Run this after changing a
# dependency in pyproject.toml, then `bash scripts/test.sh` on a fresh .venv, and commit both files.
# Usage: bash scripts/lock.sh [extra uv pip compile flags, e.g. --upgrade-package transformers]
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9   # the resolver is pinned too, so the same inputs give the same lock
tool_dir=$(mktemp -d)
trap 'rm -rf "$tool_dir"' EXIT
"${PYTHON:-python3}" -m venv "$tool_dir/venv"
"$tool_dir/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
# torch is capped at the release that lies on the machines' disk (pyproject.toml's <=2.14.1); the lock
# records that version and setup.sh installs it from there. Without --upgrade, uv keeps every pin the old
# lock has that still satisfies pyproject.toml, so a refresh changes only what it must.
"$tool_dir/venv/bin/uv" pip compile pyproject.toml \
  --extra dev --extra eval --constraint requirements/lock-constraints.txt \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "bash scripts/lock.sh" \
  --output-file requirements/lock.txt "$@"
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins); now rebuild .venv and run the tests"
