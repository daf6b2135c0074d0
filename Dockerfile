# nli-service container image (docs/deploy.md): Gunicorn serving on :5000, metrics on :8000.
#
#   podman build -t nli-service .                  # or docker build; CPU torch from PyTorch's CPU index
#   podman run --read-only -v nli-data:/data -p 5000:5000 -p 8000:8000 --stop-timeout 30 nli-service
#
# GPU variant: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (torch's CUDA
# wheels carry their CUDA libraries; the host's NVIDIA driver comes in through the container toolkit),
# then run with the GPU passed in and NLI_DEVICE=cuda.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
# Where torch comes from: PyTorch's CPU-only index (PyPI's torch is the multi-GB CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Options for every pip call of the build machine, e.g. "--cert /certs/ca.crt --find-links /wheels".
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/nli-service
WORKDIR /src
COPY requirements.txt ./
# The dependencies alone (1.4 GB): a change of the code reuses this layer, in the build and in a pull.
# PIP_OPTIONS is split into words on purpose (several options in one argument).
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/nli-service/bin/pip install $PIP_OPTIONS --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' requirements.txt)" \
    && /opt/nli-service/bin/pip install $PIP_OPTIONS -r requirements.txt

FROM deps AS wheel
COPY pyproject.toml ./
COPY nli_service ./nli_service
# No build isolation: its own pip would not get PIP_OPTIONS (so setuptools, as pyproject.toml asks, comes first).
# hadolint ignore=SC2086
RUN /opt/nli-service/bin/pip install $PIP_OPTIONS --no-cache-dir "setuptools>=68" \
    && /opt/nli-service/bin/pip wheel --no-build-isolation --no-deps --no-cache-dir --wheel-dir /src/dist .

FROM ${BASE_IMAGE} AS runtime
# A fixed numeric user, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
ARG UID=10001
RUN groupadd --system --gid "$UID" nli \
    && useradd --system --uid "$UID" --gid nli --home-dir /data --no-create-home --shell /usr/sbin/nologin nli \
    && mkdir -p /data/logs /data/huggingface /data/cache /data/models \
    && chown -R "$UID:$UID" /data
COPY --from=deps /opt/nli-service /opt/nli-service
# The package (code and the bundled model, 45 MB) in a layer of its own.
RUN --mount=type=bind,from=wheel,source=/src/dist,target=/tmp/dist \
    /opt/nli-service/bin/pip install --no-deps --no-cache-dir /tmp/dist/nli_service-*.whl
# Everything the service writes goes to /data (a volume) or /tmp and /dev/shm (tmpfs): the root
# filesystem can be read-only. Logs also go to stdout; models from the hub are cached in /data/huggingface,
# ONNX exports in /data/cache; the bundled model is inside the package (NLI_MODEL=bundled, or the fallback).
ENV PATH=/opt/nli-service/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    NLI_LOG_DIR=/data/logs \
    HF_HOME=/data/huggingface \
    XDG_CACHE_HOME=/data/cache
VOLUME ["/data"]
WORKDIR /data
USER ${UID}:${UID}
EXPOSE 5000 8000
# Ready, not just alive: 503 until the model is loaded and while draining after SIGTERM.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('NLI_PORT', '5000'), timeout=4)"]
# Exec form: `nli-service serve` execs Gunicorn, which is PID 1 and gets SIGTERM itself (drain, then a graceful
# stop: up to NLI_DRAIN_SECONDS + NLI_REQUEST_TIMEOUT + 2 s, 27 s by default; give `--stop-timeout 30`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["nli-service", "serve"]
