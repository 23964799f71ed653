# syntax=docker/dockerfile:1
#
# charrnn API image: the HTTP API only (`charrnn api`). CPU-only and small: it installs the
# base dependencies of the package and never torch (the API never imports it). Training and
# generation run in the GPU worker image, docker/worker.Dockerfile.
#
#   docker build -f docker/api.Dockerfile -t charrnn-api .
#
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHARRNN_DATA_DIR=/data

# Same uid/gid as the worker image, so both can write the shared /data volume.
ARG CHARRNN_UID=10001
RUN groupadd --system --gid "${CHARRNN_UID}" charrnn \
 && useradd --system --uid "${CHARRNN_UID}" --gid charrnn --home-dir /home/charrnn --create-home \
        --shell /usr/sbin/nologin charrnn \
 && mkdir -p /data \
 && chown charrnn:charrnn /data

WORKDIR /opt/charrnn
COPY pyproject.toml README.md* alembic.ini ./
COPY alembic ./alembic
COPY app ./app
COPY worker ./worker
# Base dependencies only: no [worker] extra, so no torch, numpy or safetensors.
# Editable (-e) because the migrations (alembic.ini, alembic/) are read from the source tree
# next to the app package; a plain `pip install .` would leave them behind.
RUN pip install -e . \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

COPY --chmod=0755 docker/api-entrypoint.sh /usr/local/bin/charrnn-api-entrypoint

USER charrnn
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["charrnn-api-entrypoint"]
CMD ["api"]
