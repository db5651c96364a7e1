#!/bin/sh
# As the upstream temporalio/server image does: when the server binds every interface, it
# broadcasts the container's own address to its membership ring (TEMPORAL_BROADCAST_ADDRESS).
set -eu
if [ "${BIND_ON_IP:-}" = 0.0.0.0 ] && [ -z "${TEMPORAL_BROADCAST_ADDRESS:-}" ]; then
  TEMPORAL_BROADCAST_ADDRESS="$(awk -v h="$(cat /etc/hostname)" '$2 == h { print $1; exit }' /etc/hosts)"
  export TEMPORAL_BROADCAST_ADDRESS
fi
exec "$@"
