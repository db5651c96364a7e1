#!/usr/bin/env bash
# `npm test`: provisions what is missing, then typecheck, lint and the whole jest suite (unit,
# replay and integration tests against a real Temporal dev server, NATS and Docker engine that the
# jest global setup starts on free loopback ports and stops afterwards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash infra/scripts/provision.sh
# shellcheck disable=SC1091
source "${CHOIROS_CACHE_DIR:-$HOME/.cache/choiros}/provisioned.env"
echo "[test] typecheck" >&2
npx tsc --noEmit -p tsconfig.json
echo "[test] lint" >&2
npx eslint --max-warnings 0 .
npx prettier --check --log-level warn .
echo "[test] jest" >&2
exec npx jest --ci "$@"
