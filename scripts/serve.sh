#!/usr/bin/env bash
# Install what the proxy needs (once), then serve config/proxy.yaml at http://127.0.0.1:8765/mcp.
# Extra arguments go to `mcpstore-proxy serve`, e.g. --port 9000 or --config my.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ensure_python_env
cd "$MCPSTORE_ROOT"
exec .venv/bin/mcpstore-proxy serve "$@"
