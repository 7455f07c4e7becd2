#!/usr/bin/env bash
# Build the container image on this machine, then run it and drive it with a real MCP client.
#
#   scripts/build_image.sh            # build localhost/mcpstore-proxy:latest, run it, check it, stop it
#   scripts/build_image.sh --no-run   # build only
#
# Public image registries are out of reach here, so the base is made with mmdebstrap from the Debian archive this
# machine's apt uses (python3, python3-venv, ca-certificates) and imported into podman; the Dockerfile takes it as
# its BASE_IMAGE. podman, runc and mmdebstrap come from Debian's packages, installed when missing (root only). The
# base tarball is cached in ${XDG_CACHE_HOME:-~/.cache}/mcpstore-proxy and made again after a week (security
# updates), or at once after `rm -r ~/.cache/mcpstore-proxy`.
#
# The run checks: the image refuses to start without `auth` (it binds 0.0.0.0); with a mounted config, a token from
# the environment, a read-only root filesystem and tests/fixtures/stateful_server.py as its upstream, it gets ready,
# refuses a request without the token, and serves tool calls to the MCP SDK client (scripts/drive_image.py); every
# process in it runs as uid 10001; its HEALTHCHECK passes; on SIGTERM it drains and exits 0. Then the same with the
# config of deploy/kubernetes/configmap.yaml, whose demo upstreams ship in the image.
#
# Exit status: 0 when all of it held; 77 when this machine cannot build or run images (the "skip:" line says why);
# 1 otherwise. Lines starting "build_image:" are the summary. Every container it starts, it removes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

IMAGE="${MCPSTORE_IMAGE:-localhost/mcpstore-proxy:latest}"
CACHE_DIR="${MCPSTORE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/mcpstore-proxy}"
BASE_PACKAGES="python3,python3-venv,ca-certificates"
BASE_MAX_AGE_DAYS=7
IMAGE_UID=10001
EXIT_SKIP=77
STARTED_AT=$SECONDS

BASE_IMAGE=""   # the local base's tag, once made
CONTAINER=""    # the container create_container made last
ADDRESS=""      # where start_serving's container is published (host:port)
CONTAINERS=()   # every container not yet removed, for the cleanup
WORK_DIR=""

summary() { printf 'build_image: %s\n' "$*"; }
skip() {
  summary "skip: $*"
  exit "$EXIT_SKIP"
}
fail() {
  summary "FAILED: $*" >&2
  exit 1
}

# podman with runc: crun 1.8 (Debian 12's) refuses a hybrid cgroup hierarchy, which this machine has; runc takes both.
pod() { podman --runtime runc "$@"; }

cleanup() {
  local id
  for id in "${CONTAINERS[@]}"; do
    pod rm --force --time 5 "$id" >/dev/null 2>&1 || true
  done
  if [ -n "$WORK_DIR" ]; then rm -rf "$WORK_DIR"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

ensure_container_tools() {
  local missing=() tool
  [ "$(id -u)" -eq 0 ] || skip "podman runs as root here (rootless podman needs subuid ranges); run this as root"
  for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || skip "${missing[*]} missing, and no apt-get to install them from Debian"
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 ||
    skip "apt-get update failed: Debian's archive cannot be reached to install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    skip "apt-get install ${missing[*]} failed (not in this machine's Debian archive?)"
}

# The Debian archive this machine's apt uses, for mmdebstrap: a deb822 or sources.list file (nothing: its default).
debian_sources() {
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    echo /etc/apt/sources.list.d/debian.sources
  elif grep -qs '^deb ' /etc/apt/sources.list; then
    echo /etc/apt/sources.list
  fi
}

make_base_image() {
  local suite sources key tarball started
  suite="${MCPSTORE_BASE_SUITE:-$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" || true)}"
  suite="${suite:-bookworm}"
  sources="$(debian_sources)"
  # The tarball is named for what went into it: the suite, the packages, and the archive's sources.
  key="$(cat <(echo "$suite $BASE_PACKAGES") ${sources:+"$sources"} | sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/base-$suite-$key.tar"
  BASE_IMAGE="localhost/mcpstore-proxy-base:$suite-$key"
  mkdir -p "$CACHE_DIR"
  if [ ! -f "$tarball" ] || [ -n "$(find "$tarball" -mtime +"$BASE_MAX_AGE_DAYS")" ]; then
    log "making the base with mmdebstrap ($suite: $BASE_PACKAGES)"
    started=$SECONDS
    # Documentation and translations are left out: the image runs a server, nobody reads man pages in it.
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" --format=tar \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$suite" "$tarball.partial" ${sources:+"$sources"} || {
      rm -f "$tarball.partial"
      fail "mmdebstrap could not make the base from ${sources:-the default Debian mirror}"
    }
    mv "$tarball.partial" "$tarball"
    pod rmi "$BASE_IMAGE" >/dev/null 2>&1 || true # made from the tarball this one replaces
    summary "base: made with mmdebstrap in $((SECONDS - started)) s ($suite: $BASE_PACKAGES), cached in $tarball"
  else
    summary "base: cached in $tarball"
  fi
  if ! pod image exists "$BASE_IMAGE"; then
    pod import --quiet "$tarball" "$BASE_IMAGE" >/dev/null
  fi
}

build_image() {
  local size started ca ca_mount=() arguments
  # pip in the build stage reaches PyPI through this machine's TLS set-up: lend the build this machine's CA bundle
  # (the one pip here uses). A build volume is not kept in the image.
  ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  if [ -f "$ca" ]; then ca_mount=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro"); fi
  # --format docker: the OCI image format has no HEALTHCHECK.
  arguments=(--format docker --network host "${ca_mount[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE")
  log "building $IMAGE"
  started=$SECONDS
  # The build stage gets a tag of its own, so that the prune below keeps it as the cache for the next build.
  { pod build "${arguments[@]}" --target build --tag "$IMAGE-build-stage" "$MCPSTORE_ROOT" &&
    pod build "${arguments[@]}" --tag "$IMAGE" "$MCPSTORE_ROOT"; } >"$WORK_DIR/build.log" 2>&1 || {
    tail -n 40 "$WORK_DIR/build.log" >&2
    fail "podman build failed (the last lines of its output are above)"
  }
  # The layers of earlier builds that no tag reaches any more (only this image's: they carry its label).
  pod image prune --force --filter "label=org.opencontainers.image.title=mcpstore-proxy" >/dev/null 2>&1 || true
  size="$(pod image inspect --format '{{.Size}}' "$IMAGE")"
  summary "image: $IMAGE built in $((SECONDS - started)) s from $BASE_IMAGE ($((size / 1000000)) MB)"
}

# podman asks for 1048576 open files and processes by default; without CAP_SYS_RESOURCE (as in a sandbox) the
# runtime may not raise its limits that far, so ask for what is had, within a server's needs.
limits() {
  local files processes
  files="$(ulimit -Hn)"
  processes="$(ulimit -Hu)"
  if [ "$files" = unlimited ] || [ "$files" -gt 65536 ]; then files=65536; fi
  if [ "$processes" = unlimited ] || [ "$processes" -gt 4096 ]; then processes=4096; fi
  echo "--ulimit=nofile=$files:$files --ulimit=nproc=$processes:$processes"
}

create_container() {
  # --health-interval=disable: no systemd timer (there is no systemd here); `healthcheck run` still runs the check.
  # shellcheck disable=SC2046 # the limits are separate words
  CONTAINER="$(pod create --health-interval=disable $(limits) "$@")" || fail "podman create failed"
  CONTAINERS+=("$CONTAINER")
}

remove_container() {
  local kept=() id
  pod rm --force --time 5 "$1" >/dev/null 2>&1 || true
  for id in "${CONTAINERS[@]}"; do
    if [ "$id" != "$1" ]; then kept+=("$id"); fi
  done
  CONTAINERS=("${kept[@]}")
}

# A sandbox may not let podman run containers at all (no namespaces, no cgroups): that is a reason to skip, not a
# failure. Asked with the base image, before anything is built.
check_containers_run() {
  local output
  create_container "$BASE_IMAGE" /bin/true
  output="$(pod start --attach "$CONTAINER" 2>&1)" ||
    skip "podman cannot run a container on this machine: $(grep -v 'level=' <<<"$output" | tail -n 1)"
  remove_container "$CONTAINER"
}

# The image's packages are exactly those of constraints.txt, which the test suite runs against.
check_pinned_versions() {
  local shipped pinned
  create_container --entrypoint /opt/mcpstore-proxy/bin/python "$IMAGE" -m pip freeze --exclude mcpstore-proxy
  shipped="$(pod start --attach "$CONTAINER" 2>/dev/null | sort -f)" || fail "pip freeze in the image failed"
  remove_container "$CONTAINER"
  pinned="$(grep -v '^#' "$MCPSTORE_ROOT/constraints.txt" | sort -f)"
  if [ "$shipped" != "$pinned" ]; then
    fail "the image's packages differ from constraints.txt: $(diff <(echo "$pinned") <(echo "$shipped") | tr '\n' ' ')"
  fi
  summary "packages: the $(wc -l <<<"$shipped") of constraints.txt, at its versions"
}

check_refuses_without_auth() {
  local id output status
  printf 'mcpServers: {}\n' >"$WORK_DIR/open.yaml"
  chmod a+r "$WORK_DIR/open.yaml"
  create_container --volume "$WORK_DIR/open.yaml:/config/proxy.yaml:ro" "$IMAGE"
  id="$CONTAINER"
  output="$(timeout 120 podman --runtime runc start --attach "$id" 2>&1)" || true
  status="$(pod inspect --format '{{.State.ExitCode}}' "$id")"
  remove_container "$id"
  if [ "$status" != 2 ] || ! grep -q "needs 'auth'" <<<"$output"; then
    fail "without auth the image should refuse to start (exit 2, \"needs 'auth'\"); it exited $status: $output"
  fi
  summary "without auth: refused to start, exit 2 ($(grep -o "serving on [^ ]* reaches beyond this machine" <<<"$output"))"
}

write_fixture_config() {
  # What a deployment writes: the token comes from the environment, state goes to the writable /data.
  cat >"$WORK_DIR/fixture.yaml" <<'YAML'
tool_pins_file: /data/tool-pins.json
runtime_services_file: /data/runtime-services.json
auth:
  tokens:
    - {token: "${ALICE_TOKEN}", principal: alice}
mcpServers:
  fixture:
    command: ${PYTHON}
    args: ["/fixtures/stateful_server.py", "--name", "fixture"]
YAML
  chmod a+r "$WORK_DIR/fixture.yaml"
}

# Runs the image on the config file $1 as deploy/kubernetes does: the root filesystem read-only, /data and $HOME
# writable (podman adds /tmp), the tokens from the environment. Sets CONTAINER and ADDRESS (host:port).
start_serving() {
  create_container --read-only \
    --mount type=tmpfs,destination=/data,tmpfs-size=64m,U=true \
    --mount type=tmpfs,destination=/home/mcpstore,tmpfs-size=64m,U=true \
    --volume "$1:/config/proxy.yaml:ro" --volume "$MCPSTORE_ROOT/tests/fixtures:/fixtures:ro" \
    --env ALICE_TOKEN --env OPS_TOKEN --publish 127.0.0.1::8765 "$IMAGE"
  # Quiet: podman 4.3 complains on stderr that there is no systemd to time health checks, which is no failure.
  pod start "$CONTAINER" >/dev/null 2>"$WORK_DIR/start.log" ||
    fail "podman start failed: $(cat "$WORK_DIR/start.log")"
  ADDRESS="$(pod port "$CONTAINER" 8765 | head -n 1)"
  [ -n "$ADDRESS" ] || fail "podman published no port for 8765"
}

# The MCP client's checks (scripts/drive_image.py) against the container $1 at $2; more arguments go to it.
drive() {
  local id="$1" address="$2"
  shift 2
  "$MCPSTORE_ROOT/.venv/bin/python" "$MCPSTORE_ROOT/scripts/drive_image.py" --url "http://$address" \
    --token-env ALICE_TOKEN "$@" | sed 's/^/build_image: /' || {
    pod logs "$id" 2>&1 | tail -n 30 >&2
    fail "the MCP client's checks failed (the container's last log lines are above)"
  }
}

# SIGTERM, as `podman stop` and Kubernetes send it: the proxy drains and exits 0.
stop_serving() {
  local id="$1" status
  pod stop --time 40 "$id" >/dev/null 2>&1 || fail "podman stop failed"
  status="$(pod inspect --format '{{.State.ExitCode}}' "$id")"
  [ "$status" = 0 ] || fail "on SIGTERM the proxy exited $status, not 0: $(pod logs "$id" 2>&1 | tail -n 10)"
  remove_container "$id"
}

run_with_a_fixture_upstream() {
  local id uids health started=$SECONDS
  write_fixture_config
  start_serving "$WORK_DIR/fixture.yaml"
  id="$CONTAINER"
  summary "container ${id:0:12} started, published at http://$ADDRESS/mcp"
  drive "$id" "$ADDRESS"

  uids="$(pod top "$id" huser args | tail -n +2)"
  if awk -v uid="$IMAGE_UID" '$1 != uid {bad = 1} END {exit !bad}' <<<"$uids"; then
    fail "a process in the container does not run as uid $IMAGE_UID: $uids"
  fi
  summary "non-root: all $(wc -l <<<"$uids") processes (the proxy and its upstream) run as uid $IMAGE_UID"

  pod healthcheck run "$id" >/dev/null 2>&1 || true
  health="$(pod inspect --format '{{.State.Health.Status}}' "$id")"
  [ "$health" = healthy ] || fail "the HEALTHCHECK did not pass: $(pod inspect --format '{{json .State.Health}}' "$id")"
  summary "HEALTHCHECK: $health ($(pod image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" |
    grep -o "http://[^']*"))"

  stop_serving "$id"
  summary "SIGTERM: drained and exited 0 ($((SECONDS - started)) s from start to stop)"
}

run_with_the_kubernetes_config() {
  local config="$WORK_DIR/kubernetes.yaml"
  "$MCPSTORE_ROOT/.venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["proxy.yaml"])' \
    "$MCPSTORE_ROOT/deploy/kubernetes/configmap.yaml" >"$config"
  chmod a+r "$config"
  start_serving "$config"
  summary "deploy/kubernetes/configmap.yaml's config: container ${CONTAINER:0:12} started"
  drive "$CONTAINER" "$ADDRESS" --demo
  stop_serving "$CONTAINER"
  summary "deploy/kubernetes/configmap.yaml's config: served the demo upstreams, drained and exited 0"
}

random_token() { head -c 24 /dev/urandom | base64 | tr '+/' '-_'; }

main() {
  local run=1
  case "${1:-}" in
    --no-run) run=0 ;;
    "") ;;
    *)
      echo "usage: scripts/build_image.sh [--no-run]" >&2
      exit 2
      ;;
  esac
  ensure_container_tools
  WORK_DIR="$(mktemp -d)"
  make_base_image
  check_containers_run
  build_image
  if [ "$run" = 1 ]; then
    if ! "$MCPSTORE_ROOT/.venv/bin/python" -c 'import mcp, httpx2, yaml' >/dev/null 2>&1; then
      ensure_python_env # the MCP client that drives the container
    fi
    ALICE_TOKEN="$(random_token)" OPS_TOKEN="$(random_token)"
    export ALICE_TOKEN OPS_TOKEN # what the containers' configs name, passed with --env
    check_pinned_versions
    check_refuses_without_auth
    run_with_a_fixture_upstream
    run_with_the_kubernetes_config
  fi
  summary "done in $((SECONDS - STARTED_AT)) s"
}

main "$@"
