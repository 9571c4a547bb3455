#!/usr/bin/env bash
# GPU acceptance check: train and sample a tiny RPG generator on CUDA, print throughput and
# timings, and fail (exit 1) when CUDA's float32 samples differ from the CPU's beyond the stated
# tolerances. The last line of output is a JSON summary. 25 s on one H100 (docs/benchmarks, "GPU check").
#
#   docker/gpu_check.sh                        # from a checkout (uses .venv when present)
#   docker compose run --rm --entrypoint rpg-gpu-check worker      # inside the worker image
#   docker/gpu_check.sh --device cpu --train-steps 20              # no GPU: CPU against CPU
#
# Every option goes to `python -m models.bench.gpu_check` (see its --help). Set PYTHON to choose
# the interpreter.
set -euo pipefail

if [[ -z "${PYTHON:-}" ]]; then
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -x "$repo/.venv/bin/python" && -f "$repo/models/bench/gpu_check.py" ]]; then
    PYTHON="$repo/.venv/bin/python"
    cd "$repo"
  else
    PYTHON=python  # an installed package (the worker image)
  fi
fi

# Which card and driver this ran on, for the record (stderr: stdout ends with the JSON line).
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
fi

exec "$PYTHON" -m models.bench.gpu_check "$@"
