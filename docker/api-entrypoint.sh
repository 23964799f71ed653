#!/usr/bin/env bash
# Entrypoint of the API image. With no arguments (or `api`): migrate the database, then run the API
# on 0.0.0.0:8000. Anything else is run as given, e.g.
#   docker compose run --rm api charrnn keys create alice
set -euo pipefail

if [ "$#" -eq 0 ] || [ "$1" = "api" ]; then
    [ "$#" -gt 0 ] && shift
    mkdir -p "${CHARRNN_DATA_DIR:-/data}"
    charrnn db upgrade
    exec charrnn api --host 0.0.0.0 --port 8000 "$@"
fi

exec "$@"
