# syntax=docker/dockerfile:1
# Detector image: CPU-only torch, the detector package, non-root, no build tools.
#   docker build -t detector:0.1.0 .
#   docker run -p 9100:9100 -v "$PWD/models:/models:ro" detector:0.1.0
# Without a registry (podman, a debootstrap base, the host's pip set-up): `make image`.
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
# Where torch comes from: the CPU wheel index by default (PyPI's Linux wheel is the multi-GB
# CUDA build); empty: pip's own configuration decides (a local wheel, a mirror).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/sh", "-eu", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, in its own layer (large, rarely changes); the package's own pin
# (torch==2.13.0) is then satisfied by the CPU build.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install --no-cache-dir torch==2.13.0; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY detector ./detector
# The scoring kernels are compiled now, for any x86-64 CPU (NUMBA_CPU_NAME=generic), so that a new
# container loads them instead of compiling them (detector/jit.py copies this cache at start).
# The cache is keyed by the source's path: -P keeps /src/detector off sys.path, so the installed
# package is the one compiled.
ENV NUMBA_CPU_NAME=generic
RUN pip install --no-cache-dir . \
 && python -c "import detector, torch; print('torch', torch.__version__)" \
 && NUMBA_CACHE_DIR=/opt/venv/share/detector/numba-cache python -P -m detector.precompile

# ---------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="detector" \
      org.opencontainers.image.description="Real-time anomaly detection on Kafka streams with a stateful LSTM autoencoder"
RUN groupadd --system --gid 10001 detector \
 && useradd --system --uid 10001 --gid detector --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin detector \
 && mkdir -p /models /etc/detector
COPY --from=build /opt/venv /opt/venv
# Default configuration; Kubernetes mounts its ConfigMap over /etc/detector,
# and DETECTOR_* environment variables override single settings.
COPY config.example.toml /etc/detector/config.toml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CPU_NAME=generic \
    DETECTOR_NUMBA_CACHE_SEED=/opt/venv/share/detector/numba-cache \
    DETECTOR_MODEL__PATH=/models/current
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["detector"]
CMD ["run", "--config", "/etc/detector/config.toml"]
