"""Property-based fuzzing of every reader of files from elsewhere (issue 21, item 3).

Zoo folders, generator bundles, generated-sample folders (`rpg evaluate --generated`, `rpg zoo
import`) and PEFT adapter folders are built from random bytes, mutated safetensors headers,
random / deeply nested / oversized JSON, odd names and symlinks that lead out of the folder.
Whatever the input, each reader must:

- raise nothing but the project's named errors (never a bare ValueError, KeyError, ...);
- stay within 500 MB of peak memory above the module's baseline;
- open no file outside the folder it was given (an audit hook records every `open`).

Hypothesis runs derandomized (the same examples every run) with bounded examples, so the
whole module takes well under two minutes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.adapters.folder import read_adapter_folder
from models.adapters.spec import AdapterError
from models.bundle import BundleError
from models.errors import EvaluationError, UnsafeFileError
from models.evaluation.novelty import load_generated_dir
from models.generator import Generator
from models.limits import FileLimits
from models.safefiles import DTYPE_SIZES
from models.zoo.build import _read_user_state_dict
from models.zoo.store import ZooError, load_zoo, write_state_dict

NAMED = (ZooError, BundleError, UnsafeFileError, EvaluationError, AdapterError)
# Small JSON limits keep "oversized" examples cheap to write; the checks are the same.
LIMITS = FileLimits(max_json_bytes=256 * 1024, max_safetensors_header_bytes=256 * 1024)
RSS_BOUND_KIB = 500 * 1000 * 1000 // 1024
FUZZ = settings(
    derandomize=True,
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# ---------------------------------------------------------------------------- the audit


class OpenAudit:
    """Records the paths `open` / `os.open` are called with while `watching` is set.

    An audit hook cannot be removed, so one is installed per process and stays idle
    (``watching is None``) outside these tests.
    """

    watching: list[str] | None = None

    def __init__(self) -> None:
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and self.watching is not None and args:
            path = args[0]
            if isinstance(path, str | bytes | os.PathLike):
                self.watching.append(os.fsdecode(path))


AUDIT = OpenAudit()


@pytest.fixture(scope="module")
def baseline_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def check_reader(read: Callable[[Path], object], folder: Path, sandbox: Path, base: int) -> None:
    """Run ``read(folder)``; only named errors, bounded memory, no open outside ``folder``."""
    opened: list[str] = []
    AUDIT.watching = opened
    try:
        read(folder)
    except NAMED as exc:
        assert "\n" not in str(exc).strip(), str(exc)
    finally:
        AUDIT.watching = None
    inside = os.path.realpath(folder) + os.sep
    root = os.path.realpath(sandbox) + os.sep
    for path in opened:
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
        assert not real.startswith(root) or real.startswith(inside), f"opened {path} ({real})"
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    assert rise < RSS_BOUND_KIB, f"peak RSS rose {rise} KiB"


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A scratch root holding the folder under test and, beside it, files it must not open."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def fresh(sandbox: Path) -> Path:
    """An empty folder to fill, plus `outside/` with a readable secret beside it."""
    for child in sandbox.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    outside = sandbox / "outside"
    outside.mkdir()
    write_state_dict({"secret": torch.ones(2)}, outside / "secret.safetensors")
    (outside / "secret.json").write_text('{"format": "rpg-zoo"}')
    folder = sandbox / "folder"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------------------- strategies


def _valid_safetensors() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.safetensors"
        write_state_dict({"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3)}, path)
        return path.read_bytes()


VALID = _valid_safetensors()
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)


@st.composite
def header_bytes(draw: st.DrawFn) -> bytes:
    """A safetensors file whose JSON header is random but shaped like one."""
    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from([*DTYPE_SIZES, "F128", "", "f32"]),
            "shape": st.lists(st.integers(-1, 2**40), max_size=4),
            "data_offsets": st.lists(st.integers(-1, 2**63), max_size=3),
        }
    )
    doc = draw(st.dictionaries(st.text(max_size=6), entry | json_values, max_size=4))
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + draw(st.binary(max_size=64))


safetensors_bytes = st.one_of(
    st.just(VALID),
    st.binary(max_size=200),
    st.integers(0, len(VALID) - 1).map(lambda cut: VALID[:cut]),
    st.integers(0, 2**64 - 1).map(lambda n: struct.pack("<Q", n) + VALID[8:]),
    st.tuples(st.integers(8, len(VALID) - 1), st.integers(0, 255)).map(
        lambda change: VALID[: change[0]] + bytes([change[1]]) + VALID[change[0] + 1 :]
    ),
    header_bytes(),
)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


json_bytes = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
    st.integers(2, 100_000).map(_nested),
    st.just(b'{"a": ' + b"1" * (LIMITS.max_json_bytes + 10) + b"}"),
    st.just(b'{"a": 1, "a": 2}'),
    st.just(b'{"a": NaN}'),
)


def mutated(doc: Any) -> st.SearchStrategy[bytes]:
    """``doc`` with the value at one of its key paths replaced by a random JSON value."""
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value[:3]):
                walk(item, (*path, index))

    walk(doc, ())

    def apply(change: tuple[tuple[Any, ...], Any]) -> bytes:
        path, value = change
        copy = json.loads(json.dumps(doc))
        if not path:
            return json.dumps(value).encode()
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return json.dumps(copy).encode()

    return st.tuples(st.sampled_from(paths), json_values).map(apply)


names = st.one_of(
    st.sampled_from(["../outside/secret.safetensors", "/etc/passwd", "a/b.safetensors", "."]),
    st.text(max_size=12),
)
links = st.sampled_from(
    ["outside/secret.safetensors", "outside/secret.json", "outside", "missing", "folder"]
)


def place_link(folder: Path, sandbox: Path, name: str, target: str) -> None:
    link = folder / name
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(sandbox / target)


# ---------------------------------------------------------------------------- properties


ZOO_DOC = {
    "format": "rpg-zoo",
    "version": 1,
    "architecture": None,
    "dataset": None,
    "condition": {"kind": "none"},
    "checkpoints": [
        {"file": "c0.safetensors", "accuracy": 0.5, "run": 0, "condition": None},
        {"file": "c1.safetensors", "accuracy": None, "run": 1, "condition": None},
    ],
}


@FUZZ
@given(
    zoo_json=st.one_of(st.just(json.dumps(ZOO_DOC).encode()), mutated(ZOO_DOC), json_bytes),
    files=st.lists(safetensors_bytes, min_size=1, max_size=2),
    entry=names,
    link=st.none() | links,
)
def test_zoo_folders(
    sandbox: Path,
    baseline_kib: int,
    zoo_json: bytes,
    files: list[bytes],
    entry: str,
    link: str | None,
) -> None:
    folder = fresh(sandbox)
    (folder / "zoo.json").write_bytes(zoo_json)
    for index, data in enumerate(files):
        (folder / f"c{index}.safetensors").write_bytes(data)
    if link is not None:
        place_link(folder, sandbox, "c1.safetensors", link)
    elif entry:
        doc = dict(ZOO_DOC, checkpoints=[{"file": entry, "accuracy": None, "run": 0}])
        (folder / "zoo.json").write_text(json.dumps(doc))

    def read(path: Path) -> None:
        load_zoo(path, limits=LIMITS).state_dicts()

    check_reader(read, folder, sandbox, baseline_kib)


@pytest.fixture(scope="module")
def bundle_files(tiny_bundle: Path) -> dict[str, bytes]:
    return {
        name: (tiny_bundle / name).read_bytes() for name in ("config.json", "model.safetensors")
    }


@FUZZ
@given(data=st.data())
def test_bundles(
    sandbox: Path, baseline_kib: int, bundle_files: dict[str, bytes], data: st.DataObject
) -> None:
    config = json.loads(bundle_files["config.json"])
    folder = fresh(sandbox)
    choice = data.draw(st.sampled_from(["config", "weights", "link", "both"]))
    config_bytes = bundle_files["config.json"]
    weights = bundle_files["model.safetensors"]
    if choice in ("config", "both"):
        config_bytes = data.draw(st.one_of(mutated(config), json_bytes))
    if choice in ("weights", "both"):
        weights = data.draw(safetensors_bytes)
    (folder / "config.json").write_bytes(config_bytes)
    (folder / "model.safetensors").write_bytes(weights)
    if choice == "link":
        name = data.draw(st.sampled_from(["config.json", "model.safetensors"]))
        place_link(folder, sandbox, name, data.draw(links))

    def read(path: Path) -> None:
        Generator.from_pretrained(path, limits=LIMITS)

    check_reader(read, folder, sandbox, baseline_kib)


def _read_for_import(path: Path) -> None:
    for file in sorted(path.glob("*.safetensors")):  # what `rpg zoo import` reads
        _read_user_state_dict(file)


@FUZZ
@given(files=st.lists(safetensors_bytes, min_size=1, max_size=3), link=st.none() | links)
def test_generated_folders(
    sandbox: Path, baseline_kib: int, files: list[bytes], link: str | None
) -> None:
    folder = fresh(sandbox)
    for index, data in enumerate(files):
        (folder / f"sample_{index:03d}.safetensors").write_bytes(data)
    if link is not None:
        place_link(folder, sandbox, "sample_000.safetensors", link)

    check_reader(load_generated_dir, folder, sandbox, baseline_kib)
    check_reader(_read_for_import, folder, sandbox, baseline_kib)


ADAPTER_CONFIG = {
    "peft_type": "LORA",
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["fc1"],
    "lora_dropout": 0.0,
    "bias": "none",
    "task_type": None,
}


@FUZZ
@given(data=st.data())
def test_adapter_folders(sandbox: Path, baseline_kib: int, data: st.DataObject) -> None:
    folder = fresh(sandbox)
    config = data.draw(st.one_of(mutated(ADAPTER_CONFIG), json_bytes))
    (folder / "adapter_config.json").write_bytes(config)
    (folder / "adapter_model.safetensors").write_bytes(data.draw(safetensors_bytes))
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(["adapter_config.json", "adapter_model.safetensors"]))
        place_link(folder, sandbox, name, data.draw(links))
    check_reader(read_adapter_folder, folder, sandbox, baseline_kib)


def test_the_checks_catch_what_they_look_for(sandbox: Path, baseline_kib: int) -> None:
    """The fuzz properties can fail: an outside open, an unnamed error, both are caught."""
    folder = fresh(sandbox)
    (folder / "peek").symlink_to(sandbox / "outside" / "secret.json")
    with pytest.raises(AssertionError, match="opened"):
        check_reader(lambda path: (path / "peek").read_bytes(), folder, sandbox, baseline_kib)
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        check_reader(lambda path: empty["x"], folder, sandbox, baseline_kib)
