"""Atomic file writes: readers see the old file or the whole new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


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
