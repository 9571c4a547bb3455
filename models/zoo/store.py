"""Model zoos on disk: a directory of ``.safetensors`` checkpoints plus ``zoo.json``.

``zoo.json`` (format ``rpg-zoo``, version 1)::

    {"format": "rpg-zoo", "version": 1,
     "architecture": {"name": ..., "builder": "module:function", "kwargs": {...}} | null,
     "dataset": {"name": ..., "split": {...}} | null,
     "condition": {"kind": "none"} | {"kind": "vector", "dim": D, ...},
     "checkpoints": [{"file": "ckpt_000.safetensors", "accuracy": 0.97 | null,
                      "run": 0, "condition": null | [D floats],
                      "heldout": true (optional; absent = false)}, ...],
     "provenance": {...},
     "adapter": {...} (adapter zoos only: see models.adapters.base)}

A directory of ``.safetensors`` files without ``zoo.json`` is a zoo too (architecture unknown,
every file its own run). Files are only ever read with safetensors, never unpickled.

An adapter zoo's checkpoints are LoRA adapter state dicts of one base network (PEFT's key
names); its ``adapter`` section records the PEFT config, the form (canonical or raw) and the
base (architecture, weights, sha256), and ``architecture`` is the base's.

A checkpoint flagged ``heldout`` belongs to a task kept for evaluation: it is stored (evaluation
compares generated models with it) but generators never train on it (``Zoo.training_zoo()``).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from models.errors import UnsafeFileError
from models.fileio import atomic_write_text, save_safetensors
from models.limits import DEFAULT_LIMITS, FileLimits
from models.safefiles import inside, load_safetensors, read_json, read_safetensors_header
from models.zoo.architecture import build_module, check_spec, parse_trust
from models.zoo.errors import UntrustedBuilderError, ZooError

if TYPE_CHECKING:
    from models.adapters.base import AdapterBase

__all__ = [
    "ZOO_FILE",
    "ZOO_FORMAT",
    "ZOO_VERSION",
    "UntrustedBuilderError",
    "Zoo",
    "ZooCheckpoint",
    "ZooError",
    "build_module",
    "check_consistent",
    "load_zoo",
    "save_zoo",
    "staged_directory",
    "write_state_dict",
]

ZOO_FILE = "zoo.json"
ZOO_FORMAT = "rpg-zoo"
ZOO_VERSION = 1
CONDITION_KINDS = ("none", "vector")


@dataclass(frozen=True)
class ZooCheckpoint:
    """One checkpoint of a zoo: its file (relative to the zoo), accuracy, run id, condition.

    ``heldout``: the checkpoint's task is held out from generator training (kept for evaluation).
    """

    file: str
    accuracy: float | None = None
    run: int = 0
    condition: list[float] | None = None
    heldout: bool = False

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's entry in zoo.json (``heldout`` only when set: older zoos unchanged)."""
        entry: dict[str, Any] = {
            "file": self.file,
            "accuracy": self.accuracy,
            "run": self.run,
            "condition": self.condition,
        }
        if self.heldout:
            entry["heldout"] = True
        return entry


@dataclass
class Zoo:
    """A loaded zoo: where it lives, what architecture it holds, and its checkpoints."""

    path: Path
    architecture: dict[str, Any] | None
    dataset: dict[str, Any] | None
    condition: dict[str, Any]
    checkpoints: list[ZooCheckpoint]
    provenance: dict[str, Any] = field(default_factory=dict)
    # What the person who loaded the zoo trusts (models.zoo.architecture); never from zoo.json.
    trust_builders: tuple[str, ...] = ()
    # Adapter zoos: the PEFT config, form and base (models.adapters.base); None otherwise.
    adapter: dict[str, Any] | None = None
    # Extra files of a built-in zoo (e.g. a baseline adapter), name -> file inside the zoo.
    extras: dict[str, str] = field(default_factory=dict)
    # Bounds on what the zoo's files may hold (models.limits), from whoever loaded it.
    limits: FileLimits = DEFAULT_LIMITS

    def __len__(self) -> int:
        return len(self.checkpoints)

    def files(self) -> list[Path]:
        """Absolute paths of the checkpoint files, in zoo order."""
        return [self.path / c.file for c in self.checkpoints]

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """All checkpoints as CPU state dicts, in zoo order (headers checked, safetensors only)."""
        return [self.read(p) for p in self.files()]

    def read(self, path: Path) -> dict[str, Tensor]:
        """One safetensors file of the zoo (a checkpoint or an extra) as a CPU state dict.

        The file must stay inside the zoo (symlinks resolved) and pass the header checks of
        ``models.safefiles`` under the zoo's limits; otherwise ``ZooError``.
        """
        try:
            return load_safetensors(inside(self.path, Path(path).name), self.limits)
        except UnsafeFileError as e:
            raise ZooError(str(e)) from None

    def run_ids(self) -> list[int]:
        """The training-run id of every checkpoint, in zoo order."""
        return [c.run for c in self.checkpoints]

    def accuracies(self) -> list[float | None]:
        """The recorded accuracy of every checkpoint (None where unknown)."""
        return [c.accuracy for c in self.checkpoints]

    def training_zoo(self) -> Zoo:
        """This zoo without its held-out checkpoints: what a generator may train on."""
        kept = [c for c in self.checkpoints if not c.heldout]
        if not kept:
            raise ZooError(
                f"every checkpoint of zoo {self.path} is held out; rebuild it with fewer "
                "held-out tasks (or clear 'heldout' in zoo.json) so a generator has data"
            )
        return replace(self, checkpoints=kept)

    def heldout_checkpoints(self) -> list[ZooCheckpoint]:
        """The checkpoints kept out of generator training, in zoo order."""
        return [c for c in self.checkpoints if c.heldout]

    def build_module(self) -> nn.Module:
        """A fresh module of the zoo's architecture (requires a known architecture).

        A builder that is not the project's runs only if ``load_zoo(..., trust_builders=...)``
        trusted it; otherwise ``UntrustedBuilderError`` says how to.
        """
        if self.architecture is None:
            raise ZooError(
                f"zoo {self.path} does not name its architecture (no zoo.json); "
                "import it with `rpg zoo import SRC --out DIR --architecture module:function`"
            )
        return build_module(self.architecture, trust_builders=self.trust_builders)

    @property
    def is_adapter_zoo(self) -> bool:
        """Whether the checkpoints are LoRA adapters of a base network."""
        return self.adapter is not None

    def adapter_base(self) -> AdapterBase:
        """The adapter section, ready to build the base and check its weights (adapter zoos)."""
        from models.adapters.base import AdapterBase

        if self.adapter is None:
            raise ZooError(f"zoo {self.path} holds whole networks, not adapters")
        return AdapterBase(self.adapter, self.path, trust_builders=self.trust_builders)

    def to_json(self) -> dict[str, Any]:
        """The zoo.json document of this zoo."""
        return {
            "format": ZOO_FORMAT,
            "version": ZOO_VERSION,
            "architecture": self.architecture,
            "dataset": self.dataset,
            "condition": self.condition,
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "provenance": self.provenance,
            **({"adapter": self.adapter} if self.adapter is not None else {}),
            **({"extras": self.extras} if self.extras else {}),
        }


# ---------------------------------------------------------------------------- files


def write_state_dict(
    state_dict: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a state dict as safetensors through a temp file + rename (never half-written)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {})}
    save_safetensors(tensors, path, meta)


def _looks_like_zoo(path: Path) -> bool:
    return all(
        p.is_file() and (p.name == ZOO_FILE or p.suffix == ".safetensors") for p in path.iterdir()
    )


@contextmanager
def staged_directory(out: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory that replaces ``out`` only if the block succeeds.

    Refuses a non-empty ``out`` unless ``overwrite``; even then only a directory that holds
    nothing but a zoo (``zoo.json`` and ``.safetensors`` files) is replaced, so a wrong
    ``--out`` cannot wipe unrelated files.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ZooError(f"{out} exists and is not a directory; choose another output path")
        if any(out.iterdir()):
            if not overwrite:
                raise ZooError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace")
            if not _looks_like_zoo(out):
                raise ZooError(
                    f"{out} holds files other than a zoo; refusing to replace it, "
                    "delete it yourself or choose another output directory"
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a zoo is an ordinary shared directory
        yield tmp
        old: Path | None = None
        if out.exists():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                old.rmdir()
                out.rename(old)
            else:
                out.rmdir()
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:  # put the previous zoo back rather than leave nothing
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_zoo(zoo: Zoo) -> Path:
    """Validate ``zoo`` and write its ``zoo.json`` atomically; returns the file's path."""
    doc = zoo.to_json()
    _validate_document(doc, zoo.path)
    for c in zoo.checkpoints:
        if not (zoo.path / c.file).is_file():
            raise ZooError(f"checkpoint file {c.file!r} is missing from {zoo.path}")
    target = zoo.path / ZOO_FILE
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ZooError(f"zoo.json for {zoo.path} is not plain JSON (or has NaN/inf): {e}") from e
    atomic_write_text(target, text)
    return target


# ---------------------------------------------------------------------------- loading


def _validate_document(doc: Any, where: Path) -> None:
    def fail(msg: str) -> ZooError:
        return ZooError(f"{where / ZOO_FILE}: {msg}")

    if not isinstance(doc, Mapping):
        raise fail("must hold a JSON object")
    if doc.get("adapter") is not None:
        # Deferred: models.adapters.base imports models.zoo.architecture (package init order).
        from models.adapters.base import check_section
        from models.adapters.spec import AdapterError

        try:
            check_section(doc["adapter"], "adapter")
        except (AdapterError, ZooError) as err:
            raise fail(str(err)) from None
    extras = doc.get("extras", {})
    if not isinstance(extras, Mapping) or not all(
        isinstance(v, str) and Path(v).name == v and v not in ("", ".", "..")
        for v in extras.values()
    ):
        raise fail("'extras' must map names to file names inside the zoo")
    if doc.get("format") != ZOO_FORMAT:
        raise fail(f"'format' is {doc.get('format')!r}, expected {ZOO_FORMAT!r}")
    if doc.get("version") != ZOO_VERSION:
        raise fail(f"version {doc.get('version')!r} is not supported (this code reads 1)")
    if doc.get("architecture") is not None:
        try:
            check_spec(doc["architecture"])
        except ZooError as err:
            raise fail(str(err)) from None
    if doc.get("dataset") is not None and not isinstance(doc["dataset"], Mapping):
        raise fail("'dataset' must be an object or null")
    cond = doc.get("condition")
    if not isinstance(cond, Mapping) or cond.get("kind") not in CONDITION_KINDS:
        raise fail(f"'condition' must be an object with 'kind' in {CONDITION_KINDS}, got {cond!r}")
    dim = cond.get("dim")
    if cond["kind"] == "vector" and not (isinstance(dim, int) and dim > 0):
        raise fail(f"a 'vector' condition needs a positive integer 'dim', got {dim!r}")
    entries = doc.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise fail("'checkpoints' must be a non-empty list")
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise fail(f"checkpoint #{i} must be an object")
        name = e.get("file")
        # Plain names only: a zoo.json from elsewhere must not point outside its directory.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise fail(f"checkpoint #{i} 'file' must be a file name inside the zoo, got {name!r}")
        if name in seen:
            raise fail(f"checkpoint file {name!r} is listed twice")
        seen.add(name)
        acc = e.get("accuracy")
        if acc is not None and (
            isinstance(acc, bool) or not isinstance(acc, int | float) or not math.isfinite(acc)
        ):
            raise fail(f"{name}: 'accuracy' must be a finite number or null, got {acc!r}")
        run = e.get("run")
        if isinstance(run, bool) or not isinstance(run, int) or run < 0:
            raise fail(f"{name}: 'run' must be an integer >= 0, got {run!r}")
        c = e.get("condition")
        if cond["kind"] == "none" and c is not None:
            raise fail(f"{name}: has a condition but the zoo's condition kind is 'none'")
        if cond["kind"] == "vector" and (
            not isinstance(c, list)
            or len(c) != dim
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in c)
        ):
            raise fail(f"{name}: 'condition' must be a list of {dim} numbers, got {c!r}")
        if not isinstance(e.get("heldout", False), bool):
            raise fail(f"{name}: 'heldout' must be true or false, got {e['heldout']!r}")


def _header(path: Path, limits: FileLimits) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) of a checkpoint, from its checked header only (no tensor read)."""
    try:
        header = read_safetensors_header(inside(path.parent, path.name), limits)
    except UnsafeFileError as e:
        raise ZooError(f"{path} is not a readable .safetensors file: {e}") from None
    if header.num_parameters > limits.max_target_parameters:
        raise ZooError(
            f"{path}: {header.num_parameters} parameters, more than RPG_MAX_TARGET_PARAMETERS="
            f"{limits.max_target_parameters}"
        )
    return header.shapes()


def check_consistent(paths: list[Path], limits: FileLimits = DEFAULT_LIMITS) -> None:
    """All files must hold the same keys with the same shapes and dtypes (headers checked)."""
    ref_path = paths[0]
    ref = _header(ref_path, limits)
    if not ref:
        raise ZooError(f"{ref_path} holds no tensors")
    for p in paths[1:]:
        h = _header(p, limits)
        if h == ref:
            continue
        missing = sorted(set(ref) - set(h))
        extra = sorted(set(h) - set(ref))
        if missing or extra:
            raise ZooError(
                f"{p.name} has different keys than {ref_path.name} "
                f"(missing {missing[:5]}, unexpected {extra[:5]}); a zoo holds one architecture"
            )
        k = next(k for k in ref if h[k] != ref[k])
        raise ZooError(
            f"{p.name}: tensor {k!r} is {h[k][0]} {h[k][1]} but {ref[k][0]} {ref[k][1]} in "
            f"{ref_path.name}; a zoo holds one architecture with one dtype per tensor"
        )


def load_zoo(
    path: Path | str, *, trust_builders: Iterable[str] = (), limits: FileLimits = DEFAULT_LIMITS
) -> Zoo:
    """Load and validate a zoo directory (with ``zoo.json``, or a bare folder of safetensors).

    Validation reads only the safetensors headers: every listed file exists and all files
    share keys, shapes and dtypes. Tensors are read later by ``Zoo.state_dicts()``.
    ``trust_builders``: builders outside the project's that ``Zoo.build_module()`` may run
    (``models.zoo.architecture``); loading itself never imports a builder. ``limits``
    bound what zoo.json and the checkpoints may hold (``models.limits``).
    """
    path = Path(path)
    if path.is_file() and path.name == ZOO_FILE:
        path = path.parent
    if not path.is_dir():
        raise ZooError(f"zoo directory {path} does not exist")
    meta = path / ZOO_FILE
    if meta.is_file():
        try:
            doc = read_json(meta, limits)
        except UnsafeFileError as e:
            raise ZooError(str(e)) from None
        _validate_document(doc, path)
        checkpoints = [
            ZooCheckpoint(
                file=e["file"],
                accuracy=None if e.get("accuracy") is None else float(e["accuracy"]),
                run=int(e["run"]),
                condition=None
                if e.get("condition") is None
                else [float(v) for v in e["condition"]],
                heldout=bool(e.get("heldout", False)),
            )
            for e in doc["checkpoints"]
        ]
        zoo = Zoo(
            path=path,
            architecture=None if doc.get("architecture") is None else dict(doc["architecture"]),
            dataset=None if doc.get("dataset") is None else dict(doc["dataset"]),
            condition=dict(doc["condition"]),
            checkpoints=checkpoints,
            provenance=dict(doc.get("provenance") or {}),
            adapter=None if doc.get("adapter") is None else dict(doc["adapter"]),
            extras=dict(doc.get("extras") or {}),
            limits=limits,
        )
        missing = [c.file for c in checkpoints if not (path / c.file).is_file()]
        if missing:
            raise ZooError(f"{meta} lists files that do not exist: {missing[:5]}")
    else:
        files = sorted(p.name for p in path.glob("*.safetensors") if p.is_file())
        if len(files) > limits.max_tensors:
            raise ZooError(f"{path}: more than {limits.max_tensors} checkpoints (RPG_MAX_TENSORS)")
        if not files:
            raise ZooError(
                f"{path} has neither {ZOO_FILE} nor .safetensors files; "
                "a zoo is a folder of safetensors state dicts of one architecture"
            )
        # Unknown provenance: assume every file comes from its own training run.
        zoo = Zoo(
            path=path,
            architecture=None,
            dataset=None,
            condition={"kind": "none"},
            checkpoints=[ZooCheckpoint(file=f, run=i) for i, f in enumerate(files)],
            limits=limits,
        )
    check_consistent(zoo.files(), limits)
    zoo.trust_builders = parse_trust(trust_builders)
    return zoo
