# syntax=docker/dockerfile:1
#
# The RPG GPU worker (`rpg worker`): loads its generators once onto the GPU and serves jobs.
#
#   docker build -f docker/worker.Dockerfile -t rpg-worker .        (from the repository root)
#   docker run --gpus '"device=0"' -v $PWD/generators:/generators:ro \
#     -e RPG_REDIS_URL=redis://HOST:6379/0 ... rpg-worker
#
# Base image: pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime.
# - torch 2.8.0 is inside pyproject.toml's range (torch>=2.4), so pip keeps the image's torch;
# - CUDA 12.8 has kernels for Ampere (A100), Hopper (H100/H200) and Blackwell (B200, RTX 50xx,
#   which need >= 12.8); the host needs an NVIDIA driver for CUDA 12.x (R570+ for 12.8, older
#   R525+ drivers through CUDA's minor-version compatibility) and the NVIDIA Container Toolkit;
# - the `runtime` flavour has no compilers or CUDA headers (about 3 GB smaller than `devel`);
#   nothing here compiles CUDA code (the Mamba2 scan is pure PyTorch; the fused mamba_ssm
#   kernel is used only when that package is installed, which this image does not do).
# Bump the tag as one unit (torch, CUDA, cuDNN); docker/gpu_check.sh checks the result.

FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# --system-site-packages: the venv sees the base image's CUDA torch, which satisfies the
# package's torch requirement, so pip installs no second (CPU or CUDA) torch.
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY pyproject.toml README.md /src/
COPY models /src/models
COPY worker /src/worker
COPY service /src/service
RUN pip wheel --no-deps --wheel-dir /wheels /src \
 && pip install "$(echo /wheels/rpg_service-*.whl)[s3,hub]" \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch lost its CUDA build')" \
 && rpg --help > /dev/null


# Same base: the venv's python links to the base image's interpreter.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    RPG_WORKER_DEVICE=cuda \
    RPG_DATA_DIR=/data \
    RPG_GENERATORS=/generators \
    HF_HOME=/cache/huggingface

RUN groupadd --system --gid 10001 rpg \
 && useradd --system --uid 10001 --gid rpg --create-home --home-dir /home/rpg rpg \
 && mkdir -p /data /generators /cache/huggingface \
 && chown rpg:rpg /data /cache/huggingface

COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/rpg-healthcheck
COPY docker/gpu_check.sh /usr/local/bin/rpg-gpu-check

USER rpg
WORKDIR /home/rpg

# Healthy = this container's worker has a fresh heartbeat in Redis. Loading generators (or
# fetching hf:// bundles) comes first, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
  CMD ["python", "/usr/local/bin/rpg-healthcheck", "worker"]

# SIGTERM (docker stop): the current job finishes, then the worker exits; give it time
# (compose: stop_grace_period). RPG_WORKER_DEVICE=cuda fails loudly without a GPU instead of
# quietly sampling on the CPU; set it to cpu or auto to override.
ENTRYPOINT ["rpg"]
CMD ["worker"]
