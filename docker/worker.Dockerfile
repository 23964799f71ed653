# syntax=docker/dockerfile:1
#
# charrnn worker image: the GPU image (`charrnn worker`: training and generation). It carries
# torch with CUDA; the API image (docker/api.Dockerfile) has no torch at all.
#
#   docker build -f docker/worker.Dockerfile -t charrnn-worker .
#   docker run --gpus all ... charrnn-worker        # needs the NVIDIA Container Toolkit on the host
#
# The torch wheels from download.pytorch.org bring their own CUDA and cuDNN libraries, so the base
# only needs the NVIDIA container environment (the driver comes from the host at run time); the
# small CUDA "base" image is enough. The CUDA build of torch is chosen with TORCH_CUDA (cu128 =
# CUDA 12.8; the host driver must support it: R570 or newer).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ghcr.io/astral-sh/uv:0.8 AS uv
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG PYTHON_VERSION=3.11

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CHARRNN_DATA_DIR=/data \
    CHARRNN_DEVICE=cuda \
    CHARRNN_WORKER_HOST=0.0.0.0 \
    CHARRNN_WORKER_PORT=8001

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 ships Python 3.12 and charrnn needs 3.11: take a uv-managed CPython 3.11.
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv

# torch with CUDA from the official PyTorch index, in its own layer (it is the big one).
RUN uv pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"

# Same uid/gid as the API image, so both can write the shared /data volume.
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
# The package with its [worker] extra; torch==2.13.0 is already satisfied by the CUDA build above.
# Editable (-e) because the migrations (alembic.ini, alembic/) are read from the source tree.
RUN uv pip install -e ".[worker]" \
 && python -c "import torch; assert torch.version.cuda, 'torch was installed without CUDA'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

COPY --chmod=0755 docker/worker-entrypoint.sh /usr/local/bin/charrnn-worker-entrypoint

USER charrnn
VOLUME ["/data"]
EXPOSE 8001

# The worker's generation server; the port is read at check time from CHARRNN_WORKER_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHARRNN_WORKER_PORT', '8001'), timeout=4)"]

# The worker checkpoints its job and hands it back on SIGTERM; give it time before SIGKILL
# (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["charrnn-worker-entrypoint"]
CMD ["worker"]
