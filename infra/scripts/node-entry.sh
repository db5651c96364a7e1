#!/usr/bin/env bash
# Runs a TypeScript entrypoint of the project with tsx, installing node modules first when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ ! -d node_modules/tsx ]; then npm ci --no-audit --no-fund --loglevel=error >&2; fi
exec node --import tsx "$@"
