"""Writing generated state dicts as `.safetensors` files with provenance metadata.

Each file is written to a temporary name in the destination directory and renamed, so a
reader never sees a partial file. safetensors metadata is string -> string.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.fileio import save_safetensors
from models.generator import DTYPES, Generator


@dataclass(frozen=True)
class WrittenFile:
    """A generated file on local disk."""

    path: Path
    sha256: str
    size_bytes: int
    num_parameters: int


def sample_metadata(
    generator: Generator,
    *,
    seed: int,
    sampler: str,
    steps: int,
    index: int,
    condition: Tensor | Sequence[float] | None = None,
    job_id: str | None = None,
    dtype: str | None = None,
) -> dict[str, str]:
    """The string metadata stamped on a generated file (DESIGN.md: format, architecture,
    generator id, seed, sampler, steps, condition, job id)."""
    cond = (
        None
        if condition is None
        else [float(v) for v in torch.as_tensor(condition).flatten().tolist()]
    )
    meta = {
        "format": "pt",
        "architecture": json.dumps(generator.architecture, sort_keys=True),
        "generator": generator.generator_id,
        "seed": str(seed),
        "sample_index": str(index),
        "sampler": sampler,
        "steps": str(steps),
        "condition": json.dumps(cond),
    }
    if job_id is not None:
        meta["job_id"] = job_id
    if dtype is not None:
        meta["dtype"] = dtype
    return meta


def cast_floats(state_dict: Mapping[str, Tensor], dtype: str | None) -> dict[str, Tensor]:
    """Cast floating-point tensors to `dtype` ("float32" | "float16" | "bfloat16"); others as-is."""
    if dtype is None:
        return dict(state_dict)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    target = DTYPES[dtype]
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}


def save_state_dict(
    path: Path, state_dict: Mapping[str, Tensor], metadata: dict[str, str]
) -> WrittenFile:
    """Atomically write one state dict (temp name + fsync + rename) and hash it."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_safetensors(tensors, path, metadata)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    numel = sum(t.numel() for t in tensors.values())
    return WrittenFile(path, digest.hexdigest(), path.stat().st_size, numel)


def write_samples(
    samples: Sequence[Mapping[str, Tensor]],
    out: str | os.PathLike[str],
    *,
    generator: Generator,
    seed: int,
    sampler: str,
    steps: int,
    condition: Any = None,
    job_id: str | None = None,
    dtype: str | None = None,
) -> list[Path]:
    """Write `sample_000.safetensors`, ... into `out`; returns their paths."""
    directory = Path(out)
    paths = []
    for index, state_dict in enumerate(samples):
        meta = sample_metadata(
            generator,
            seed=seed,
            sampler=sampler,
            steps=steps,
            index=index,
            condition=condition,
            job_id=job_id,
            dtype=dtype,
        )
        written = save_state_dict(
            directory / f"sample_{index:03d}.safetensors", cast_floats(state_dict, dtype), meta
        )
        paths.append(written.path)
    return paths
