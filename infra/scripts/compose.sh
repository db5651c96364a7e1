#!/usr/bin/env bash
# `npm run compose:up` / `npm run compose:down` / `npm run compose -- <docker-compose args>`: the
# production-shaped stack of docker-compose.yml on this machine.
#
#   up    builds the images that are missing or stale (infra/images/build.sh: no registry needed),
#         starts every service, waits until api and worker are healthy, then prints the same
#         machine-readable KEY=value lines as `npm start` (API_URL, TEMPORAL_UI_URL, NATS_URL, ...).
#   down  stops and removes the containers and the network; the named data volumes stay (add
#         --volumes to `npm run compose -- down --volumes` to drop them too).
#   *     any other docker-compose command, with the same files, project and variables.
#
# CHOIROS_IMAGES=local (default) uses the images infra/images/build.sh makes; CHOIROS_IMAGES=registry
# uses the upstream images named in docker-compose.yml (postgres, temporalio/*, nats, node:20-slim).
# Without AUTH_ISSUER (environment or .env) the local dev issuer runs in the api container
# (infra/compose/dev-issuer.yml) and `up` prints a DEV_TOKEN. Without POSTGRES_PASSWORD one is made
# once and kept in ${CHOIROS_CACHE_DIR:-~/.cache/choiros}/compose/<project>/postgres-password.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CACHE="${CHOIROS_CACHE_DIR:-$HOME/.cache/choiros}"
PROJECT="${CHOIROS_COMPOSE_PROJECT:-choiros}"
COMPOSE="${CHOIROS_COMPOSE:-$(command -v docker-compose || true)}"
say() { printf '[choiros] %s\n' "$*" >&2; }
[ -n "$COMPOSE" ] || { say 'ERROR: docker-compose is missing (apt-get install docker-compose)'; exit 1; }
cmd="${1:-up}"
shift || true

# A value from the environment, else from .env (KEY=value lines), else empty.
from_env_file() {
  local key="$1"
  if [ -n "${!key:-}" ]; then printf '%s' "${!key}"; return; fi
  [ -f .env ] && sed -n "s/^$key=//p" .env | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
  return 0
}

files=(-f docker-compose.yml)
AUTH_ISSUER="$(from_env_file AUTH_ISSUER)"
if [ -z "$AUTH_ISSUER" ]; then
  files+=(-f infra/compose/dev-issuer.yml)
  export AUTH_ISSUER=http://127.0.0.1:8091
  DEV_ISSUER=1
fi
POSTGRES_PASSWORD="$(from_env_file POSTGRES_PASSWORD)"
if [ -z "$POSTGRES_PASSWORD" ]; then
  pwfile="$CACHE/compose/$PROJECT/postgres-password"
  if [ ! -s "$pwfile" ]; then
    mkdir -p "$(dirname "$pwfile")"
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$pwfile")
  fi
  POSTGRES_PASSWORD="$(cat "$pwfile")"
fi
export POSTGRES_PASSWORD
if [ "${CHOIROS_IMAGES:-local}" = local ]; then
  set -a
  eval "$(bash infra/images/build.sh --print-env)"
  set +a
fi
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
# CHOIROS_COMPOSE may be two words (`docker compose`).
read -r -a compose_cmd <<< "$COMPOSE"
dc() { "${compose_cmd[@]}" -p "$PROJECT" "${files[@]}" "$@"; }

case "$cmd" in
  up)
    if [ "${CHOIROS_IMAGES:-local}" = local ]; then
      bash infra/images/build.sh >&2
    else
      dc --profile build build deps sandbox >&2 && dc build >&2
    fi
    say "starting project $PROJECT (docker-compose up -d)"
    dc up -d --no-build "$@" >&2
    for svc in api worker; do
      id="$(dc ps -q "$svc")"
      [ -n "$id" ] || { say "ERROR: $svc has no container"; exit 1; }
      say "waiting for $svc to be healthy"
      for _ in $(seq 1 180); do
        h="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
        [ "$h" = healthy ] && break
        if [ "$h" = unhealthy ] || [ "$(docker inspect -f '{{.State.Status}}' "$id")" = exited ]; then
          say "ERROR: $svc is $h; its last log lines:"
          docker logs --tail 30 "$id" >&2 || true
          exit 1
        fi
        sleep 2
      done
      [ "$h" = healthy ] || { say "ERROR: $svc did not become healthy (docker logs $id)"; exit 1; }
    done
    bind="${CHOIROS_BIND_ADDRESS:-127.0.0.1}"
    api_url="http://$bind:${CHOIROS_API_PORT:-8080}"
    say "the stack is up (project $PROJECT). Logs: npm run compose -- logs -f"
    echo "API_URL=$api_url"
    echo "TEMPORAL_UI_URL=http://$bind:${CHOIROS_TEMPORAL_UI_PORT:-8233}"
    # The Temporal frontend is reachable only inside the compose network (docs/production.md).
    echo "TEMPORAL_ADDRESS=temporal:7233"
    echo "NATS_URL=nats://$bind:${CHOIROS_NATS_PORT:-4222}"
    echo "GRPC_ADDRESS=$bind:${CHOIROS_GRPC_PORT:-9090}"
    echo "API_METRICS_URL=$api_url/metrics"
    echo "COMPOSE_PROJECT=$PROJECT"
    if [ -n "${DEV_ISSUER:-}" ]; then
      token="$(dc exec -T api node --import tsx infra/compose/dev-issuer.ts mint --sub dev)"
      echo "DEV_TOKEN=$token"
    fi
    ;;
  down)
    say "stopping project $PROJECT (named volumes stay)"
    dc --profile build down --remove-orphans "$@" >&2
    ;;
  token)
    [ -n "${DEV_ISSUER:-}" ] || { say 'ERROR: AUTH_ISSUER is set: tokens come from that issuer'; exit 1; }
    dc exec -T api node --import tsx infra/compose/dev-issuer.ts mint "$@"
    ;;
  *)
    dc "$cmd" "$@"
    ;;
esac
