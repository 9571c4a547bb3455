"""Writing generated state dicts as `.safetensors` files (or, for adapter generators, PEFT
folders) with provenance metadata.

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
    numel = sum(t.numel() for t in tensors.values())
    return WrittenFile(path, file_sha256(path), path.stat().st_size, numel)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a written file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sample(
    directory: Path,
    index: int,
    state_dict: Mapping[str, Tensor],
    *,
    generator: Generator,
    metadata: dict[str, str],
    dtype: str | None = None,
    merge_base: Mapping[str, Tensor] | None = None,
) -> list[WrittenFile]:
    """Write sample ``index`` into ``directory``; returns the files written.

    A whole-network generator writes ``sample_000.safetensors``. An adapter generator writes
    the PEFT folder ``sample_000/`` (``adapter_config.json`` + ``adapter_model.safetensors``),
    or, given ``merge_base`` (its checked base weights), base + adapter as
    ``sample_000.safetensors`` (loadable into the base architecture with ``strict=True``).
    """
    name = f"sample_{index:03d}"
    if not generator.is_adapter:
        return [
            save_state_dict(
                directory / f"{name}.safetensors", cast_floats(state_dict, dtype), metadata
            )
        ]
    from models.adapters.samples import adapter_metadata, merged_sample, write_adapter_sample

    meta = adapter_metadata(generator.config["adapter"], metadata)
    if merge_base is not None:
        merged = merged_sample(state_dict, merge_base, generator.config["adapter"])
        meta["merged"] = "true"
        return [
            save_state_dict(directory / f"{name}.safetensors", cast_floats(merged, dtype), meta)
        ]
    files = write_adapter_sample(
        directory / name, cast_floats(state_dict, dtype), generator.config["adapter"], meta
    )
    return [WrittenFile(p, file_sha256(p), p.stat().st_size, n) for p, n in files]


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
    merge: bool = False,
) -> list[Path]:
    """Write every sample into ``out`` (``write_sample``); returns the paths written.

    ``merge``: an adapter generator writes base + adapter state dicts instead of PEFT folders.
    """
    directory = Path(out)
    merge_base = None
    if merge:
        if not generator.is_adapter:
            raise ValueError(
                f"--merge is for adapter generators; {generator.name!r} makes whole networks"
            )
        merge_base = generator.adapter_base().state_dict()
    paths: list[Path] = []
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
        written = write_sample(
            directory,
            index,
            state_dict,
            generator=generator,
            metadata=meta,
            dtype=dtype,
            merge_base=merge_base,
        )
        paths.extend(w.path for w in written)
    return paths
