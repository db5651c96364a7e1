#!/usr/bin/env bash
# `npm start`: provisions what is missing, then runs the whole local stack in the foreground.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash infra/scripts/provision.sh
# shellcheck disable=SC1091
source "${CHOIROS_CACHE_DIR:-$HOME/.cache/choiros}/provisioned.env"
exec node --import tsx infra/scripts/stack.ts "$@"
