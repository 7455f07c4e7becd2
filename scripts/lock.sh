#!/usr/bin/env bash
# Resolve mcpstore-proxy's run-time dependencies afresh (the newest versions pyproject.toml allows) into
# constraints.txt: the versions the container image installs and the test suite runs against. Run
# scripts/test.sh after it, and commit constraints.txt with what it changed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "resolving into a fresh environment with $("$python" --version 2>&1)"
"$python" -m venv "$work/venv"
# From a copy of the package: a build from the checkout would leave its build files in the tree.
(cd "$MCPSTORE_ROOT" && git ls-files -z pyproject.toml README.md mcpstore_proxy | xargs -0 cp --parents -t "$work")
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work"
{
  head -n 3 "$MCPSTORE_ROOT/constraints.txt"
  # A wheel found on disk (PIP_FIND_LINKS) is frozen as "name @ file://…": pin its version instead.
  "$work/venv/bin/python" -m pip freeze --exclude mcpstore-proxy | sed -E 's|^([A-Za-z0-9_.-]+) @ file://.*/[^/]+-([0-9][^-]*)-.*\.whl.*$|\1==\2|'
} > "$work/constraints.txt"
mv "$work/constraints.txt" "$MCPSTORE_ROOT/constraints.txt"
log "wrote constraints.txt ($(grep -c '==' "$MCPSTORE_ROOT/constraints.txt") packages); now run scripts/test.sh"
