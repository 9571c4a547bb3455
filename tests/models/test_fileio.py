"""models.fileio: atomic writes and reproducible safetensors bytes."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.fileio import atomic_write_text, canonicalize_safetensors, save_safetensors

# Eight keys: a random order survives two processes by chance with probability 1/40320.
METADATA = {k: f"value-{k}" for k in ("format", "seed", "sampler", "steps", "eta", "a", "z", "m")}

WRITER = """
import sys, torch
from pathlib import Path
from models.fileio import save_safetensors
tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
meta = {k: f"value-{k}" for k in ("format", "seed", "sampler", "steps", "eta", "a", "z", "m")}
save_safetensors(tensors, Path(sys.argv[1]), meta)
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _header(path: Path) -> tuple[int, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, data[8 : 8 + length]


def test_same_tensors_and_metadata_give_the_same_bytes_across_processes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    paths = [tmp_path / f"run{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", WRITER, str(path)], check=True, cwd=repo)
    assert len({_sha(p) for p in paths}) == 1
    length, header = _header(paths[0])
    assert length % 8 == 0
    parsed = json.loads(header)
    assert next(iter(parsed)) == "__metadata__"
    assert list(parsed["__metadata__"]) == sorted(METADATA)


def test_round_trip_keeps_tensors_dtypes_and_metadata(tmp_path: Path) -> None:
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "half": torch.randn(5).to(torch.bfloat16),
        "empty": torch.zeros(0),
        "flag": torch.tensor([True, False]),
    }
    meta = {"condition": "[1, 0]", "note": "Gewichte – ünïcode ✓", "quote": 'a "b" \\ c'}
    path = tmp_path / "x.safetensors"
    save_safetensors(tensors, path, meta)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        assert torch.equal(loaded[name], value)
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == meta
    assert path.stat().st_mode & 0o777 == 0o644


def test_canonicalize_rewrites_a_header_of_another_length(tmp_path: Path) -> None:
    """A header written with other spacing (a different length) is rebuilt, data intact."""
    tensors = {
        "a": torch.arange(6, dtype=torch.float32),
        "b": torch.tensor([1, 2], dtype=torch.int32),
    }
    reference = tmp_path / "reference.safetensors"
    save_safetensors(tensors, reference, METADATA)

    plain = tmp_path / "plain.safetensors"
    save_file(tensors, plain, metadata=METADATA)
    length, header = _header(plain)
    data = plain.read_bytes()[8 + length :]
    spaced = json.dumps(json.loads(header), indent=3).encode()
    spaced += b" " * (-len(spaced) % 8)
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(struct.pack("<Q", len(spaced)) + spaced + data)
    assert _sha(odd) != _sha(reference)

    canonicalize_safetensors(odd)
    assert odd.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob("*.canon"))


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_safetensors({"a": torch.ones(2)}, path, {"bad": 3})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_write_text_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    atomic_write_text(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert path.stat().st_mode & 0o777 == 0o644
