"""File writes: atomic (readers see the old file or the whole new one, never a partial one)
and, for safetensors, byte-for-byte reproducible."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

__all__ = ["atomic_write", "atomic_write_text", "canonicalize_safetensors", "save_safetensors"]


def atomic_write(target: Path, write: Callable[[str], object], *, mode: int = 0o644) -> None:
    """Call `write(temp_path)`, fsync, set `mode`, then rename over `target`.

    The temp file lives in the target's directory so the rename stays on one filesystem.
    `mode` matters because mkstemp creates 0600 files, which a gateway or worker running as
    another user (containers) could not read.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    """`atomic_write` for a UTF-8 text file."""
    atomic_write(target, lambda path: Path(path).write_text(text, encoding="utf-8"))


def _canonical_header(header: Mapping[str, Any]) -> bytes:
    """The header JSON with `__metadata__` first and sorted, tensors in data order, padded to
    8 bytes with spaces (the format's alignment rule)."""
    canonical: dict[str, Any] = {}
    if "__metadata__" in header:
        canonical["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__"]
    for name, info in sorted(tensors, key=lambda kv: (kv[1]["data_offsets"], kv[0])):
        canonical[name] = info
    raw = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def canonicalize_safetensors(path: str | os.PathLike[str]) -> None:
    """Rewrite a safetensors file's header in a canonical order, in place; data untouched.

    The safetensors library keeps `__metadata__` in a hash map whose order is random per
    process, so the same tensors and metadata give different bytes (and sha256) from one run
    to the next. Offsets are relative to the end of the header, so only the header changes.
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        new = _canonical_header(header)
        if len(new) == length:
            handle.seek(8)
            handle.write(new)
            return
    # A different length (e.g. other JSON escaping): copy the data after a new header.
    tmp = f"{os.fspath(path)}.canon"
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            src.seek(8 + length)
            dst.write(struct.pack("<Q", len(new)) + new)
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_safetensors(
    tensors: Mapping[str, Tensor],
    target: Path,
    metadata: Mapping[str, str] | None = None,
    *,
    mode: int = 0o644,
) -> None:
    """Atomically write `tensors` (contiguous, on the CPU) as safetensors with a canonical
    header: the same tensors and metadata always give the same bytes."""
    meta = dict(metadata) if metadata is not None else None

    def write(tmp: str) -> None:
        save_file(dict(tensors), tmp, metadata=meta)
        canonicalize_safetensors(tmp)

    atomic_write(target, write, mode=mode)
