"""`models.safefiles`: each check on a file from elsewhere, one case at a time (the fuzz test
in test_file_fuzz.py throws random inputs at the same readers)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from models.errors import UnsafeFileError
from models.fileio import save_safetensors
from models.limits import FileLimits
from models.safefiles import inside, load_safetensors, read_json, read_safetensors_header


def _file(tmp_path: Path, header: Mapping[str, object], data: bytes, name: str = "f") -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_a_valid_file_reads_without_touching_its_tensors(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_safetensors({"w": torch.ones(2, 3), "b": torch.zeros(2)}, path, {"format": "pt"})
    header = read_safetensors_header(path)
    assert header.shapes() == {"b": ((2,), "F32"), "w": ((2, 3), "F32")}
    assert header.metadata == {"format": "pt"} and header.num_parameters == 8
    assert torch.equal(load_safetensors(path)["w"], torch.ones(2, 3))
    with pytest.raises(UnsafeFileError, match="RPG_MAX_TARGET_PARAMETERS"):
        load_safetensors(path, FileLimits(max_target_parameters=7))


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "padded"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
        ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, ">= 0"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "offsets"),
        ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "must be an object with keys"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            "overlaps",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            b"\0" * 12,
            "gap",
        ),
        ({"__metadata__": {"k": 1}}, b"", "strings to strings"),
    ],
)
def test_headers_that_lie_are_refused(
    tmp_path: Path, header: dict[str, object], data: bytes, message: str
) -> None:
    with pytest.raises(UnsafeFileError, match=message) as caught:
        read_safetensors_header(_file(tmp_path, header, data))
    assert "\n" not in str(caught.value)


def test_the_length_prefix_is_bounded_before_anything_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(UnsafeFileError, match="RPG_MAX_SAFETENSORS_HEADER_BYTES"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(UnsafeFileError, match="truncated"):
        read_safetensors_header(path)
    path.write_bytes(b"\1\0")
    with pytest.raises(UnsafeFileError, match="too short"):
        read_safetensors_header(path)
    many = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(5)}
    with pytest.raises(UnsafeFileError, match="RPG_MAX_TENSORS"):
        read_safetensors_header(_file(tmp_path, many, b"\0" * 5), FileLimits(max_tensors=4))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100 + "]" * 100, "RPG_MAX_JSON_DEPTH"),
        ("[" * 100_000 + "]" * 100_000, "RPG_MAX_JSON_DEPTH"),
        ('{"a": 1, "a": 2}', "duplicate key"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": ', "not valid JSON"),
        ('"' + "x" * 2000 + '"', "RPG_MAX_JSON_BYTES"),
    ],
)
def test_json_is_bounded(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(text)
    with pytest.raises(UnsafeFileError, match=message):
        read_json(path, FileLimits(max_json_bytes=1000 if "x" in text else 10**6))


def test_names_and_links_stay_inside_their_folder(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    for name in ("../secret.json", "/etc/passwd", "a/b", "", ".", ".."):
        with pytest.raises(UnsafeFileError, match="not a plain file name"):
            inside(folder, name)
    (folder / "link.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(UnsafeFileError, match="symlink that leads outside"):
        read_json(folder / "link.json")
    (folder / "real.json").write_text('{"ok": true}')
    (folder / "alias.json").symlink_to(folder / "real.json")  # a link inside is fine
    assert read_json(folder / "alias.json") == {"ok": True}
    # huggingface_hub's cache: snapshot files link into the repo's blobs/.
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text('{"hub": 1}')
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to(repo / "blobs" / "abc")
    assert read_json(snapshot / "config.json") == {"hub": 1}
