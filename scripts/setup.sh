# Shared set-up for scripts/serve.sh and scripts/test.sh: sourced, not run.
# Each step is idempotent and skips work that is already done.

MCPSTORE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Create .venv and install the package (with the dev tools when asked): reinstalls only when pyproject.toml changes.
ensure_python_env() {
  local extras="${1:-}"
  local python="${PYTHON:-python3}"
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11 or newer" >&2
    return 1
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: mcpstore-proxy needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    return 1
  fi
  if [ ! -x "$MCPSTORE_ROOT/.venv/bin/python" ]; then
    log "creating .venv"
    "$python" -m venv "$MCPSTORE_ROOT/.venv"
  fi
  local target="." stamp
  [ -n "$extras" ] && target=".[$extras]"
  stamp="$MCPSTORE_ROOT/.venv/.installed-$(cat "$MCPSTORE_ROOT/pyproject.toml" "$MCPSTORE_ROOT/constraints.txt" | sha256sum | cut -c1-16)-${extras:-base}"
  if [ ! -f "$stamp" ]; then
    log "installing Python packages (${target}), run-time ones at the versions in constraints.txt"
    (cd "$MCPSTORE_ROOT" && .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$target")
    touch "$stamp"
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

apt_install() {
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Node.js and the npm packages of package-lock.json (the real MCP peers the tests run against).
ensure_node_tools() {
  if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm || { echo "error: npm is missing and could not be installed (need root)" >&2; return 1; }
  fi
  local stamp="$MCPSTORE_ROOT/node_modules/.installed-$(sha256sum "$MCPSTORE_ROOT/package-lock.json" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing npm packages (package-lock.json)"
    (cd "$MCPSTORE_ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
  fi
}

# Debian's chromium, which @playwright/mcp drives in the end-to-end tests (browser downloads are not possible).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium ||
      { echo "error: chromium is missing; install it (apt-get install chromium) or run this as root" >&2; return 1; }
  fi
}
