#!/usr/bin/env bash
# `npm run images:build`: builds every image of the compose stack on this machine, with no container
# registry: Debian root filesystems made by mmdebstrap and `docker import`ed, PostgreSQL and NATS
# from Debian packages, the Temporal server, its SQL tool and the UI server from their Go modules,
# node from the host, and the platform's own images (deps, sandbox, api, worker) from this checkout.
#
# Each image carries a label `choiros.image-inputs` with a hash of what it was made from; an image
# whose label matches is not rebuilt. Build caches live outside the repository, under
# ${CHOIROS_CACHE_DIR:-~/.cache/choiros}/images (Go module and build caches, Debian rootfs tarballs).
#
# Usage: bash infra/images/build.sh [--print-env]
#   --print-env  only print the compose variables that select the local images (no build)
# Settings: CHOIROS_IMAGE_TAG (default `compose`), CHOIROS_DEBIAN_SUITE (bookworm),
#   CHOIROS_DEBIAN_MIRROR (http://deb.debian.org/debian), TEMPORAL_VERSION (1.29.1),
#   TEMPORAL_UI_VERSION (2.42.1). Progress lines: `[images] (n/N) name: ...`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CACHE="${CHOIROS_CACHE_DIR:-$HOME/.cache/choiros}/images"
TAG="${CHOIROS_IMAGE_TAG:-compose}"
SUITE="${CHOIROS_DEBIAN_SUITE:-bookworm}"
MIRROR="${CHOIROS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TEMPORAL_VERSION="${TEMPORAL_VERSION:-1.29.1}"
TEMPORAL_UI_VERSION="${TEMPORAL_UI_VERSION:-2.42.1}"
LABEL=choiros.image-inputs

# The compose variables that point docker-compose.yml at these images (compose-up.sh exports them).
print_env() {
  cat <<EOF
CHOIROS_IMAGE_TAG=$TAG
CHOIROS_NODE_IMAGE=choiros-node:$TAG
CHOIROS_POSTGRES_IMAGE=choiros-postgres:$TAG
CHOIROS_NATS_IMAGE=choiros-nats:$TAG
CHOIROS_TEMPORAL_IMAGE=choiros-temporal:$TAG
CHOIROS_TEMPORAL_ADMINTOOLS_IMAGE=choiros-temporal:$TAG
CHOIROS_TEMPORAL_UI_IMAGE=choiros-temporal-ui:$TAG
EOF
}
if [ "${1:-}" = "--print-env" ]; then
  print_env
  exit 0
fi

STEPS=11
step=0
say() { printf '[images] %s\n' "$*"; }
begin() {
  step=$((step + 1))
  STEP_NAME="$1"
  STEP_START=$(date +%s)
  say "($step/$STEPS) $1: $2"
}
done_step() {
  local id
  id="$(docker image inspect -f '{{.Id}}' "$1" | cut -c1-19)"
  say "($step/$STEPS) $STEP_NAME: $2 $1 ($id) in $(($(date +%s) - STEP_START))s"
}
current_inputs() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
hash_of() { sha256sum | cut -c1-32; }
# Runs a command with its output kept back, printed only when it fails.
quiet() {
  local out
  if ! out="$(DOCKER_BUILDKIT=0 "$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    say "ERROR: $STEP_NAME failed: $*"
    exit 1
  fi
}
need() { command -v "$1" >/dev/null || { say "ERROR: $1 is missing ($2)"; exit 1; }; }

need docker 'install docker.io'
docker info >/dev/null 2>&1 || { say "ERROR: no Docker engine answers (npm start or dockerd starts one)"; exit 1; }
mkdir -p "$CACHE/rootfs" "$CACHE/go/mod" "$CACHE/go/build" "$CACHE/go/bin"

# --- Debian root filesystems (mmdebstrap, cached as tarballs keyed on their inputs) ---------------
# rootfs_image IMAGE "PACKAGES": a minbase Debian with PACKAGES, imported as IMAGE.
rootfs_image() {
  local image="$1" packages="$2" key tarball
  key="$(printf 'v1 %s %s %s' "$SUITE" "$MIRROR" "$packages" | hash_of)"
  if [ "$(current_inputs "$image")" = "$key" ]; then
    done_step "$image" 'up to date'
    return
  fi
  tarball="$CACHE/rootfs/$(echo "$image" | tr ':/' '__')-$key.tar"
  if [ ! -s "$tarball" ]; then
    need mmdebstrap 'apt-get install mmdebstrap'
    say "($step/$STEPS) $STEP_NAME: mmdebstrap $SUITE with: $packages"
    mmdebstrap --quiet --variant=minbase --include="$packages" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$SUITE" "${tarball%.tar}.tmp.tar" "$MIRROR"
    mv "${tarball%.tar}.tmp.tar" "$tarball"
    # Older tarballs of this image are stale.
    find "$CACHE/rootfs" -name "$(echo "$image" | tr ':/' '__')-*.tar" ! -name "$(basename "$tarball")" -delete
  fi
  docker import --change "LABEL $LABEL=$key" --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$image" >/dev/null
  done_step "$image" 'imported'
}

# docker_build IMAGE CONTEXT_DIR KEY [build args...]: builds CONTEXT_DIR/Dockerfile unless up to date.
docker_build() {
  local image="$1" ctx="$2" key="$3"
  shift 3
  if [ "$(current_inputs "$image")" = "$key" ]; then
    done_step "$image" 'up to date'
    return
  fi
  local args=()
  for a in "$@"; do args+=(--build-arg "$a"); done
  quiet docker build -q --label "$LABEL=$key" "${args[@]}" -t "$image" "$ctx"
  done_step "$image" 'built'
}

# go_tool NAME MODULE_PATH@VERSION: `go install` into $CACHE/go/bin/NAME/ (one directory per tool:
# the Temporal server and the UI server are both `cmd/server`).
go_tool() {
  local name="$1" pkg="$2" dir="$CACHE/go/bin/$1"
  if [ -x "$dir/.done-$(echo "$pkg" | tr '/@' '__')" ]; then return; fi
  need go 'install Go 1.24 or newer'
  say "($step/$STEPS) $STEP_NAME: go install $pkg"
  rm -rf "$dir" && mkdir -p "$dir"
  GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOBIN="$dir" CGO_ENABLED=0 GOFLAGS=-trimpath \
    go install "$pkg"
  install -m 0755 /dev/null "$dir/.done-$(echo "$pkg" | tr '/@' '__')"
}

# Base: a shell, CA certificates, git (the worker and sandboxes need it), and the health-check tools.
begin base 'Debian minbase + ca-certificates, git, netcat, wget'
rootfs_image "choiros-base:$TAG" 'ca-certificates,git,netcat-openbsd,wget'

begin postgres-rootfs 'Debian minbase + postgresql-15'
rootfs_image "choiros-postgres-rootfs:$TAG" 'postgresql-15'

begin nats-rootfs 'Debian minbase + nats-server, wget'
rootfs_image "choiros-nats-rootfs:$TAG" 'nats-server,wget,ca-certificates'

# node: the base plus this host's node binary (Debian's own node is older than the platform needs).
begin node "choiros-node:$TAG (base + host node $(node --version))"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp infra/images/node/Dockerfile "$ctx/" && cp "$(readlink -f "$(command -v node)")" "$ctx/node"
key="$( (current_inputs "choiros-base:$TAG"; cd "$ctx" && sha256sum Dockerfile node) | hash_of)"
docker_build "choiros-node:$TAG" "$ctx" "$key" "BASE_IMAGE=choiros-base:$TAG"
rm -rf "$ctx"

begin postgres "choiros-postgres:$TAG"
key="$( (current_inputs "choiros-postgres-rootfs:$TAG"; cat infra/images/postgres/*) | hash_of)"
docker_build "choiros-postgres:$TAG" infra/images/postgres "$key" "BASE_IMAGE=choiros-postgres-rootfs:$TAG"

begin nats "choiros-nats:$TAG"
key="$( (current_inputs "choiros-nats-rootfs:$TAG"; cat infra/images/nats/*) | hash_of)"
docker_build "choiros-nats:$TAG" infra/images/nats "$key" "BASE_IMAGE=choiros-nats-rootfs:$TAG"

# Temporal: server and SQL tool from go.temporal.io/server, with the module's config template and
# schemas (the same files the upstream temporalio/server and admin-tools images carry).
begin temporal "choiros-temporal:$TAG (go.temporal.io/server v$TEMPORAL_VERSION)"
go_tool temporal-server "go.temporal.io/server/cmd/server@v$TEMPORAL_VERSION"
go_tool temporal-sql-tool "go.temporal.io/server/cmd/tools/sql@v$TEMPORAL_VERSION"
mod="$CACHE/go/mod/go.temporal.io/server@v$TEMPORAL_VERSION"
ctx="$(mktemp -d)"
cp infra/images/temporal/* "$ctx/"
cp "$CACHE/go/bin/temporal-server/server" "$ctx/temporal-server"
cp "$CACHE/go/bin/temporal-sql-tool/sql" "$ctx/temporal-sql-tool"
cp -r "$mod/config" "$ctx/config" && cp -r "$mod/schema" "$ctx/schema" && chmod -R u+w "$ctx"
key="$( (current_inputs "choiros-base:$TAG"; echo "$TEMPORAL_VERSION"; cat infra/images/temporal/*) | hash_of)"
docker_build "choiros-temporal:$TAG" "$ctx" "$key" "BASE_IMAGE=choiros-base:$TAG" "VERSION=$TEMPORAL_VERSION"
rm -rf "$ctx"

begin temporal-ui "choiros-temporal-ui:$TAG (github.com/temporalio/ui-server/v2 v$TEMPORAL_UI_VERSION)"
go_tool temporal-ui-server "github.com/temporalio/ui-server/v2/cmd/server@v$TEMPORAL_UI_VERSION"
ctx="$(mktemp -d)"
cp infra/images/temporal-ui/* "$ctx/"
cp "$CACHE/go/bin/temporal-ui-server/server" "$ctx/ui-server"
mkdir -p "$ctx/config"
cp "$CACHE/go/mod/github.com/temporalio/ui-server/v2@v$TEMPORAL_UI_VERSION/config/docker.yaml" "$ctx/config/" && chmod -R u+w "$ctx"
key="$( (current_inputs "choiros-base:$TAG"; echo "$TEMPORAL_UI_VERSION"; cat infra/images/temporal-ui/*) | hash_of)"
docker_build "choiros-temporal-ui:$TAG" "$ctx" "$key" "BASE_IMAGE=choiros-base:$TAG" "VERSION=$TEMPORAL_UI_VERSION"
rm -rf "$ctx"

# The platform: node_modules (from this checkout's, once per lockfile), then sandbox, api and worker
# through docker-compose.yml itself, so what compose runs is what was built.
begin deps "choiros-deps:$TAG (node_modules, once per package-lock.json)"
quiet bash infra/scripts/deps-image.sh "choiros-deps:$TAG"
done_step "choiros-deps:$TAG" 'ready'

begin verify "choiros-verify:$TAG (node + all node_modules: the choiros rebuild target's suites)"
key="$( (current_inputs "choiros-node:$TAG"; docker image inspect -f '{{.Id}}' "choiros-deps:$TAG"; cat infra/images/verify/Dockerfile) | hash_of)"
docker_build "choiros-verify:$TAG" infra/images/verify "$key" "BASE_IMAGE=choiros-node:$TAG" "DEPS_IMAGE=choiros-deps:$TAG"

begin platform "choiros-sandbox, choiros-api, choiros-worker :$TAG (docker-compose build)"
COMPOSE="${CHOIROS_COMPOSE:-$(command -v docker-compose || true)}"
[ -n "$COMPOSE" ] || { say 'ERROR: docker-compose is missing'; exit 1; }
set -a
eval "$(print_env)"
set +a
export POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-unused-for-build}" AUTH_ISSUER="${AUTH_ISSUER:-http://unused-for-build}"
export CHOIROS_VERSION="${CHOIROS_VERSION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)}"
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
read -r -a compose_cmd <<< "$COMPOSE"
quiet "${compose_cmd[@]}" --profile build build sandbox
quiet "${compose_cmd[@]}" build api worker
for i in sandbox api worker; do
  say "($step/$STEPS) platform: choiros-$i:$TAG $(docker image inspect -f '{{.Id}}' "choiros-$i:$TAG" | cut -c1-19)"
done
say "($step/$STEPS) platform: built in $(($(date +%s) - STEP_START))s"
say 'all images ready'
