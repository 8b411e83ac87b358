# syntax=docker/dockerfile:1
# padimd container image.
#   docker build -t padimd:0.1.0 .                              # CPU (default, ~1 GB)
#   docker build -t padimd:0.1.0-cuda --build-arg TORCH_VARIANT=cuda .
#   docker run --rm -p 9108:9108 -v padimd-state:/var/lib/padimd \
#       -e PADIMD_KAFKA__BOOTSTRAP_SERVERS=broker:9092 --stop-timeout 35 padimd:0.1.0
# Details: docs/deploy.md#docker.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a self-contained virtualenv in /opt/padimd ---------------------------------
FROM ${PYTHON_IMAGE} AS build
# cpu: torch from PyTorch's CPU index (no CUDA libraries, ~5x smaller).
# cuda: torch from PyPI, whose Linux wheels bundle the CUDA runtime; the host only
#       needs the NVIDIA driver and container toolkit (docker run --gpus all).
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/padimd
ENV PATH=/opt/padimd/bin:$PATH
# torch and torchvision first, both from the same index so their versions pair up;
# installing the project afterwards keeps them (they already satisfy its pins).
RUN set -eu; \
    case "$TORCH_VARIANT" in \
      cpu)  index="--index-url https://download.pytorch.org/whl/cpu" ;; \
      cuda) index="" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install $index "torch>=2.4" "torchvision>=0.19"
WORKDIR /src
# README.md is only the package's long description: not needed to build or run.
COPY pyproject.toml ./
COPY padim ./padim
COPY daemon ./daemon
RUN pip install . && padimd --help >/dev/null

# --- runtime: the virtualenv, a config, a non-root user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="padimd" \
      org.opencontainers.image.description="PaDiM visual anomaly detection for Kafka camera streams" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.padimd.torch-variant="${TORCH_VARIANT}"
# A fixed uid/gid (10001), so Kubernetes' runAsUser and volume ownership can match it.
RUN groupadd --system --gid 10001 padimd \
 && useradd --system --uid 10001 --gid padimd --home-dir /var/lib/padimd \
        --no-create-home --shell /usr/sbin/nologin padimd \
 && mkdir -p /var/lib/padimd/snapshots /etc/padimd \
 && chown -R padimd:padimd /var/lib/padimd
COPY --from=build /opt/padimd /opt/padimd
COPY deploy/config.toml /etc/padimd/config.toml
ENV PATH=/opt/padimd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    TORCH_HOME=/tmp/cache/torch
USER 10001:10001
WORKDIR /var/lib/padimd
# Camera model snapshots: keep them across container restarts and upgrades.
VOLUME ["/var/lib/padimd"]
# http.port: /metrics, /livez, /readyz.
EXPOSE 9108
# /livez answers while the event loop runs; the start period covers loading the
# backbone. Reads PADIMD_HTTP__PORT in case the port was moved by the environment.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PADIMD_HTTP__PORT', '9108'), timeout=4)"]
# SIGTERM (docker stop) starts the bounded drain; give it --stop-timeout 35.
STOPSIGNAL SIGTERM
ENTRYPOINT ["padimd"]
CMD ["--config", "/etc/padimd/config.toml"]
