#!/usr/bin/env bash
# Entrypoint of the worker image. With no arguments (or `worker`): run one worker, which trains
# queued jobs and serves generation to the API on CHARRNN_WORKER_HOST:CHARRNN_WORKER_PORT.
# Anything else is run as given (e.g. `charrnn train ...`).
#
# The API calls each worker at the URL the worker advertises (CHARRNN_WORKER_URL). When it is not
# set, advertise this container's own address, so `docker compose up --scale worker=3` gives each
# replica its own reachable URL. On another machine set CHARRNN_WORKER_URL to an address the API
# can reach (host IP and published port).
set -euo pipefail

if [ "$#" -eq 0 ] || [ "$1" = "worker" ]; then
    export CHARRNN_WORKER_HOST="${CHARRNN_WORKER_HOST:-0.0.0.0}"
    export CHARRNN_WORKER_PORT="${CHARRNN_WORKER_PORT:-8001}"
    if [ -z "${CHARRNN_WORKER_URL:-}" ]; then
        addr="$(hostname -i 2>/dev/null | awk '{print $1}' || true)"
        [ -n "${addr}" ] || addr="$(hostname 2>/dev/null || true)"
        case "${addr}" in
            *:*) addr="[${addr}]" ;;  # IPv6 literal
        esac
        # With no address at all, leave it unset: the worker then advertises its hostname itself.
        [ -z "${addr}" ] || export CHARRNN_WORKER_URL="http://${addr}:${CHARRNN_WORKER_PORT}"
    fi
    echo "charrnn worker: generation server on ${CHARRNN_WORKER_HOST}:${CHARRNN_WORKER_PORT}," \
         "advertised to the API as ${CHARRNN_WORKER_URL:-its hostname}" >&2
    exec charrnn worker
fi

exec "$@"
