#!/usr/bin/env bash
# Builds choiros-deps:local (/app/node_modules) from this checkout's installed node_modules, for
# machines whose image builds cannot reach a registry (infra/Dockerfile.deps is the normal way).
# Rebuilt only when package-lock.json changed (label choiros.deps-lock).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${1:-choiros-deps:local}"
cd "$ROOT"
[ -d node_modules ] || { echo "deps-image: node_modules missing (npm ci first)" >&2; exit 1; }
LOCK="$(sha256sum package-lock.json | cut -c1-32)"
if [ "$(docker image inspect -f '{{ index .Config.Labels "choiros.deps-lock" }}' "$IMAGE" 2>/dev/null || true)" = "$LOCK" ]; then
  echo "deps-image: $IMAGE is up to date"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Native modules (Temporal's core bridge) need shared libraries a FROM-scratch base may lack: the
# libraries ldd names go to /app/syslibs/<path>, which infra/Dockerfile.worker copies to /.
mkdir -p "$tmp/syslibs"
for so in $(find -L node_modules/@temporalio/core-bridge/releases -name index.node -path '*linux-gnu*' 2>/dev/null); do
  for lib in $(ldd "$so" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*'); do
    mkdir -p "$tmp/syslibs$(dirname "$lib")"
    cp -L "$lib" "$tmp/syslibs$lib"
  done
done
printf 'FROM scratch\nCOPY node_modules /app/node_modules\nCOPY syslibs /app/syslibs\nCOPY package.json package-lock.json /app/\n' > "$tmp/Dockerfile"
echo "deps-image: building $IMAGE from $ROOT/node_modules" >&2
# -h follows symlinks (node_modules may be one); the engine gets one tar with the Dockerfile first.
tar -c -h -f - -C "$tmp" Dockerfile syslibs -C "$ROOT" node_modules package.json package-lock.json |
  DOCKER_BUILDKIT=0 docker build -q --label "choiros.deps-lock=$LOCK" -t "$IMAGE" -
