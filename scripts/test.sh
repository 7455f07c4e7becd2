#!/usr/bin/env bash
# Install everything the test suite needs, then run lint, the strict type check, and every test.
# Extra arguments go to pytest, e.g. -k playwright or -x.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ensure_python_env dev
ensure_node_tools
ensure_chromium
cd "$MCPSTORE_ROOT"
log "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
log "pyright (strict)"
.venv/bin/pyright
log "pytest"
# Two workers: most tests wait on I/O (in-memory upstreams, or processes), so two share this 2-core machine well.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
