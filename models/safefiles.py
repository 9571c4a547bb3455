"""Reading files that someone else wrote: the one place every user-file reader goes through.

Zoos, bundles (local or from the Hub), generated folders and adapter folders are untrusted
input, like a request body. Each reader here checks what a file says before acting on it:

- `inside(folder, name)`: a name from a file stays inside its folder, also after symlinks
  are resolved (a link pointing elsewhere is refused);
- `read_json(path)`: bounded bytes (read no further than the limit), bounded nesting,
  no duplicate keys, no NaN/Infinity;
- `read_safetensors_header(path)`: the 8-byte length is bounded and inside the file, the
  JSON header is bounded in size, depth and tensor count, every dtype is known, every
  shape x dtype size equals its byte span, and the spans tile the data exactly (inside the
  file, no overlap, no gap). Nothing after the header is read;
- `load_safetensors(path)`: the header check above, then the tensors through safetensors
  (never pickle).

Every refusal is an `UnsafeFileError` (a `ValueError`) whose one-line message names the
file and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from models.errors import UnsafeFileError
from models.limits import DEFAULT_LIMITS, FileLimits

__all__ = [
    "DTYPE_SIZES",
    "SafetensorsHeader",
    "TensorInfo",
    "UnsafeFileError",
    "inside",
    "link_root",
    "load_safetensors",
    "parse_json",
    "read_json",
    "read_safetensors_header",
]

# The safetensors dtypes torch reads, and their sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: dtype name, shape, byte span in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """How many values the tensor holds."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: tensors in file order, string metadata."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def num_parameters(self) -> int:
        """Values over all tensors."""
        return sum(info.numel for info in self.tensors.values())

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype name)."""
        return {name: (info.shape, info.dtype) for name, info in self.tensors.items()}


# ---------------------------------------------------------------------------- paths


def link_root(folder: str | os.PathLike[str]) -> Path:
    """The folder that links inside ``folder`` may lead into: ``folder`` itself (resolved),
    or for a snapshot of huggingface_hub's cache (``models--org--name/snapshots/<commit>``,
    whose files are links to ``../../blobs/<hash>``) that repo's cache folder."""
    root = Path(folder).resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent
    return root


def inside(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder / name``, refused unless ``name`` is a plain file name and the path, with
    every symlink resolved, is still inside ``folder`` (``link_root``)."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or Path(name).name != name
        or "\\" in name
        or "\x00" in name
    ):
        raise UnsafeFileError(f"{folder}: {name!r} is not a plain file name inside the folder")
    root = link_root(folder)
    target = (Path(folder).resolve() / name).resolve()
    if root not in target.parents:
        raise UnsafeFileError(
            f"{Path(folder) / name}: a symlink that leads outside its folder ({target}); "
            "copy the file into the folder instead"
        )
    return target


def _real_file(path: Path) -> Path:
    """``path`` if it is a regular file inside its own folder after resolving symlinks."""
    resolved = inside(path.parent, path.name)
    if not resolved.is_file():
        raise UnsafeFileError(f"{path}: missing or not a regular file")
    return resolved


# ---------------------------------------------------------------------------- JSON


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(raw: bytes, where: str, limits: FileLimits = DEFAULT_LIMITS) -> Any:
    """Parse untrusted JSON bytes: bounded size and depth, no duplicate keys, no NaN."""
    if len(raw) > limits.max_json_bytes:
        raise UnsafeFileError(
            f"{where}: JSON larger than {limits.max_json_bytes} bytes (RPG_MAX_JSON_BYTES)"
        )
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except RecursionError:
        value = None
        depth = limits.max_json_depth + 1
    except (UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnsafeFileError(f"{where}: not valid JSON ({reason})") from None
    else:
        depth = _depth(value, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise UnsafeFileError(
            f"{where}: JSON nests deeper than {limits.max_json_depth} levels (RPG_MAX_JSON_DEPTH)"
        )
    return value


def read_json(path: str | os.PathLike[str], limits: FileLimits = DEFAULT_LIMITS) -> Any:
    """A JSON file from elsewhere, read no further than ``limits.max_json_bytes``."""
    path = _real_file(Path(path))
    with open(path, "rb") as handle:
        raw = handle.read(limits.max_json_bytes + 1)
    return parse_json(raw, str(path), limits)


# ---------------------------------------------------------------------------- safetensors


def _check_entry(name: str, entry: Any, where: str) -> TensorInfo:
    if not isinstance(entry, Mapping) or set(entry) != _TENSOR_KEYS:
        raise UnsafeFileError(
            f"{where}: tensor {name!r} must be an object with keys {sorted(_TENSOR_KEYS)}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise UnsafeFileError(
            f"{where}: tensor {name!r} has unknown dtype {dtype!r} (known: {sorted(DTYPE_SIZES)})"
        )
    ints = (shape, offsets)
    if not all(
        isinstance(seq, list) and all(type(v) is int and v >= 0 for v in seq) for seq in ints
    ):
        raise UnsafeFileError(
            f"{where}: tensor {name!r} needs 'shape' and 'data_offsets' as lists of integers >= 0"
        )
    if len(offsets) != 2 or offsets[0] > offsets[1]:
        raise UnsafeFileError(f"{where}: tensor {name!r} has data_offsets {offsets}")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    if info.numel * DTYPE_SIZES[dtype] != info.end - info.begin:
        raise UnsafeFileError(
            f"{where}: tensor {name!r} of shape {list(shape)} {dtype} needs "
            f"{info.numel * DTYPE_SIZES[dtype]} bytes but spans {info.end - info.begin}"
        )
    return info


def _check_header(doc: Any, where: str, data_size: int, limits: FileLimits) -> SafetensorsHeader:
    if not isinstance(doc, dict):
        raise UnsafeFileError(f"{where}: the safetensors header is not a JSON object")
    metadata = doc.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise UnsafeFileError(f"{where}: __metadata__ must map strings to strings")
    if len(doc) - ("__metadata__" in doc) > limits.max_tensors:
        raise UnsafeFileError(f"{where}: more than {limits.max_tensors} tensors (RPG_MAX_TENSORS)")
    tensors = {n: _check_entry(n, e, where) for n, e in doc.items() if n != "__metadata__"}
    # The spans must tile the data exactly: no byte outside the file, shared or unaccounted.
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            problem = "overlaps another" if info.begin < position else "leaves a gap before it"
            raise UnsafeFileError(f"{where}: tensor {name!r} {problem} (offset {info.begin})")
        position = info.end
    if position != data_size:
        raise UnsafeFileError(
            f"{where}: the tensors span {position} bytes but the file holds {data_size} after "
            "its header (truncated or padded file)"
        )
    return SafetensorsHeader(Path(where), tensors, dict(metadata))


def read_safetensors_header(
    path: str | os.PathLike[str], limits: FileLimits = DEFAULT_LIMITS
) -> SafetensorsHeader:
    """The checked header of a safetensors file, read without touching the tensor data."""
    path = _real_file(Path(path))
    where = str(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise UnsafeFileError(f"{where}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > limits.max_safetensors_header_bytes:
            raise UnsafeFileError(
                f"{where}: header of {length} bytes claimed, more than "
                f"{limits.max_safetensors_header_bytes} (RPG_MAX_SAFETENSORS_HEADER_BYTES)"
            )
        if length > size - 8 or length < 2:
            raise UnsafeFileError(
                f"{where}: header of {length} bytes claimed but the file holds {size - 8} "
                "after the length (truncated, or not a safetensors file)"
            )
        raw = handle.read(length)
    if not raw.startswith(b"{"):
        raise UnsafeFileError(f"{where}: the header does not start with '{{'")
    header_limits = replace(limits, max_json_bytes=limits.max_safetensors_header_bytes)
    doc = parse_json(raw.rstrip(b" "), where, header_limits)
    return _check_header(doc, where, size - 8 - length, limits)


def load_safetensors(
    path: str | os.PathLike[str],
    limits: FileLimits = DEFAULT_LIMITS,
    *,
    device: str = "cpu",
    max_parameters: int | None = None,
) -> dict[str, Tensor]:
    """The tensors of a checked safetensors file (``max_parameters``: default the target
    limit, for state dicts of a network)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_safetensors_header(path, limits)
    bound = limits.max_target_parameters if max_parameters is None else max_parameters
    if header.num_parameters > bound:
        raise UnsafeFileError(
            f"{header.path}: holds {header.num_parameters} values, more than the limit {bound} "
            "(RPG_MAX_TARGET_PARAMETERS)"
        )
    try:
        return load_file(header.path, device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # e.g. changed since
        raise UnsafeFileError(f"{header.path}: unreadable safetensors ({exc})") from None
