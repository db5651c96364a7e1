#!/usr/bin/env bash
# Idempotent provisioning for `npm start` and `npm test`: node modules, the Temporal CLI, nats-server,
# the Docker engine's packages, busybox-static (for the locally built sandbox image) and a compose CLI
# (to validate docker-compose.yml).
# Writes what it found to $CHOIROS_CACHE_DIR/provisioned.env, which start.sh and test.sh source.
# Each step says what it does; a missing piece fails with a message naming it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="${CHOIROS_CACHE_DIR:-$HOME/.cache/choiros}"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$CACHE_DIR/logs"
TEMPORAL_CLI_VERSION="v1.5.1"
mkdir -p "$BIN_DIR" "$LOG_DIR"

step() { printf '[provision] %s\n' "$*" >&2; }
fail() { printf '[provision] ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = "0" ]; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  is_root || return 1
  if [ "$APT_UPDATED" = "0" ]; then
    step "apt-get update (log: $LOG_DIR/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get update >>"$LOG_DIR/apt.log" 2>&1 || return 1
    APT_UPDATED=1
  fi
  step "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$LOG_DIR/apt.log" 2>&1
}

# --- 1. node modules -----------------------------------------------------------------------------
cd "$ROOT"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "installing node modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >&2 || fail "npm ci failed; the npm registry must be reachable"
else
  step "node modules: up to date"
fi

# --- 2. Temporal CLI (dev server) ----------------------------------------------------------------
TEMPORAL_BIN=""
if [ -n "${TEMPORAL_CLI:-}" ]; then
  [ -x "$TEMPORAL_CLI" ] || fail "TEMPORAL_CLI=$TEMPORAL_CLI is not an executable file"
  TEMPORAL_BIN="$TEMPORAL_CLI"
elif command -v temporal >/dev/null 2>&1; then
  TEMPORAL_BIN="$(command -v temporal)"
elif [ -x "$BIN_DIR/temporal" ]; then
  TEMPORAL_BIN="$BIN_DIR/temporal"
elif command -v go >/dev/null 2>&1; then
  step "building the Temporal CLI $TEMPORAL_CLI_VERSION with go install into $BIN_DIR"
  step "  (first time on a machine this takes several minutes; log: $LOG_DIR/temporal-go-install.log)"
  if GOBIN="$BIN_DIR" go install "github.com/temporalio/cli/cmd/temporal@$TEMPORAL_CLI_VERSION" \
      >"$LOG_DIR/temporal-go-install.log" 2>&1; then
    TEMPORAL_BIN="$BIN_DIR/temporal"
  else
    tail -n 20 "$LOG_DIR/temporal-go-install.log" >&2 || true
    fail "go install of the Temporal CLI failed (see $LOG_DIR/temporal-go-install.log)"
  fi
else
  step "no temporal binary and no Go toolchain: the test harness will let @temporalio/testing download the dev server"
fi
[ -n "$TEMPORAL_BIN" ] && step "temporal: $TEMPORAL_BIN ($("$TEMPORAL_BIN" --version 2>/dev/null | head -n1))"

# --- 3. nats-server ------------------------------------------------------------------------------
NATS_BIN=""
if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "${NATS_SERVER_BIN}" ]; then
  NATS_BIN="$NATS_SERVER_BIN"
elif command -v nats-server >/dev/null 2>&1; then
  NATS_BIN="$(command -v nats-server)"
elif [ -x "$BIN_DIR/nats-server" ]; then
  NATS_BIN="$BIN_DIR/nats-server"
elif apt_install nats-server; then
  NATS_BIN="$(command -v nats-server)"
elif command -v go >/dev/null 2>&1; then
  step "building nats-server with go install into $BIN_DIR"
  GOBIN="$BIN_DIR" go install github.com/nats-io/nats-server/v2@v2.10.29 >"$LOG_DIR/nats-go-install.log" 2>&1 \
    || fail "could not install nats-server (no Debian package, go install failed: $LOG_DIR/nats-go-install.log)"
  NATS_BIN="$BIN_DIR/nats-server"
else
  fail "nats-server is missing: put it on PATH, set NATS_SERVER_BIN, or run as root on Debian (apt-get install nats-server)"
fi
step "nats-server: $NATS_BIN ($("$NATS_BIN" --version 2>/dev/null | head -n1))"

# --- 4. Docker engine packages + busybox-static for the sandbox image ----------------------------
docker_reachable() { docker info >/dev/null 2>&1; }
if docker_reachable; then
  step "docker: engine reachable"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io || fail "no reachable Docker engine and dockerd is not installed; as root on Debian: apt-get install docker.io"
  fi
  command -v docker >/dev/null 2>&1 || apt_install docker.io || fail "the docker CLI is missing (apt-get install docker.io)"
  step "docker: engine not running yet; the stack starts dockerd ($(command -v dockerd))"
fi
BUSYBOX_BIN="${CHOIROS_BUSYBOX:-}"
if [ -z "$BUSYBOX_BIN" ]; then
  for candidate in /bin/busybox /usr/bin/busybox; do
    # Only a statically linked busybox runs in a FROM-scratch image (ldd fails on static binaries).
    if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then BUSYBOX_BIN="$candidate"; break; fi
  done
fi
if [ -z "$BUSYBOX_BIN" ]; then
  apt_install busybox-static || fail "a statically linked busybox is needed for the sandbox image (apt-get install busybox-static, or set CHOIROS_BUSYBOX)"
  BUSYBOX_BIN=/bin/busybox
fi
step "busybox (static): $BUSYBOX_BIN"

# --- 5. Compose CLI, for validating docker-compose.yml (test/integration/compose.int.test.ts) ------
COMPOSE_CMD=""
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD="docker compose"
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD="$(command -v docker-compose)"
elif apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD="$(command -v docker-compose)"
else
  fail "neither 'docker compose' nor docker-compose is available (install the compose plugin, or as root on Debian: apt-get install docker-compose)"
fi
step "compose: $COMPOSE_CMD ($($COMPOSE_CMD version --short 2>/dev/null | head -n1))"

cat >"$CACHE_DIR/provisioned.env" <<ENV
export CHOIROS_CACHE_DIR="$CACHE_DIR"
export CHOIROS_TEMPORAL_BIN="$TEMPORAL_BIN"
export CHOIROS_NATS_SERVER_BIN="$NATS_BIN"
export CHOIROS_BUSYBOX="$BUSYBOX_BIN"
export CHOIROS_COMPOSE="$COMPOSE_CMD"
ENV
step "done ($CACHE_DIR/provisioned.env)"
