"""``rpg zoo import SRC --out Z --architecture M:F --base-weights BASE.safetensors``: a folder
of PEFT LoRA adapter folders (one per checkpoint) becomes an adapter zoo.

Every subfolder of ``SRC`` must be a PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``) of plain LoRA (``models.adapters.spec``), all with the same
config; each must hold exactly the tensors its config implies for the base network. The
adapters are stored in canonical form (``models.adapters.canonical``) unless ``form="raw"``;
the base is copied into the zoo when small and referenced by path otherwise, with its sha256.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from models.adapters.base import FORMS, AdapterBase, place_base
from models.adapters.canonical import canonicalize
from models.adapters.folder import is_adapter_folder, read_adapter_folder
from models.adapters.merge import AdaptedModule, check_adapter
from models.adapters.spec import AdapterError, LoraSpec
from models.zoo.store import (
    Zoo,
    ZooCheckpoint,
    ZooError,
    load_zoo,
    save_zoo,
    staged_directory,
    write_state_dict,
)

__all__ = ["adapter_folders", "import_adapter_zoo"]


def adapter_folders(src: Path) -> list[Path]:
    """The PEFT adapter folders directly inside ``src`` (sorted); [] when it holds none."""
    if not src.is_dir():
        return []
    return sorted(p for p in src.iterdir() if is_adapter_folder(p))


def _read_all(folders: list[Path]) -> tuple[LoraSpec, list[dict[str, Any]]]:
    first_spec: LoraSpec | None = None
    tensors = []
    for folder in folders:
        spec, sd = read_adapter_folder(folder)
        if first_spec is None:
            first_spec = spec
        elif not spec.same_adapter(first_spec):
            raise ZooError(
                f"adapters {folders[0].name} and {folder.name} have different configs "
                f"(r {first_spec.r} vs {spec.r}, lora_alpha {first_spec.lora_alpha:g} vs "
                f"{spec.lora_alpha:g}, target_modules {first_spec.target_modules!r} vs "
                f"{spec.target_modules!r}, use_rslora {first_spec.use_rslora} vs "
                f"{spec.use_rslora}); an adapter zoo holds one kind of adapter"
            )
        tensors.append(sd)
    assert first_spec is not None
    return first_spec, tensors


def import_adapter_zoo(
    src: Path | str,
    out: Path | str,
    builder: str,
    kwargs: Mapping[str, Any] | None,
    base_weights: Path | str,
    *,
    name: str | None = None,
    form: str = "canonical",
    evaluate: Callable[[nn.Module], float] | None = None,
    dataset: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Zoo:
    """Import the adapter folders of ``src`` into an adapter zoo at ``out`` (see the module).

    ``evaluate`` maps the base with an adapter merged in to the accuracy recorded for it.
    The typed ``builder`` is trusted for this import only, as in ``import_zoo``.
    """
    src, out = Path(src), Path(out)
    if form not in FORMS:
        raise ZooError(f"--lora-form must be one of {FORMS}, got {form!r}")
    folders = adapter_folders(src)
    if not folders:
        raise ZooError(
            f"{src} holds no PEFT adapter folders (subfolders with adapter_config.json and "
            "adapter_model.safetensors)"
        )
    if out.resolve() == src.resolve():
        raise ZooError(f"--out must differ from the source folder {src}")
    try:
        spec, adapters = _read_all(folders)
    except AdapterError as e:
        raise ZooError(str(e)) from e
    arch = {"name": name or out.resolve().name, "builder": builder, "kwargs": dict(kwargs or {})}
    width = max(3, len(str(len(folders) - 1)))
    with staged_directory(out, overwrite=overwrite) as tmp:
        try:
            base_entry = place_base(Path(base_weights), tmp, hub_id=spec.base_model)
            section = {
                "kind": "lora",
                "peft_config": spec.to_peft_config(),
                "form": form,
                "base": {"architecture": arch, **base_entry},
            }
            # The person importing typed this builder: trust it for this command only.
            base = AdapterBase(section, tmp, trust_builders=[builder])
            module = base.build_module()
            base_state = base.state_dict()
            try:
                module.load_state_dict(base_state, strict=True)
            except RuntimeError as e:
                raise ZooError(
                    f"--base-weights do not fit architecture {builder!r} with kwargs "
                    f"{arch['kwargs']!r}: {e}"
                ) from e
            targets = base.layout(module)
            scorer = AdaptedModule(module, base_state, targets, spec)
            checkpoints = []
            for i, (folder, sd) in enumerate(zip(folders, adapters, strict=True)):
                check_adapter(sd, targets, spec.r, str(folder))
                stored = canonicalize(sd, targets) if form == "canonical" else sd
                acc = None
                if evaluate is not None:
                    scorer.load_state_dict(stored, strict=True)
                    acc = float(evaluate(scorer))
                target = f"adapter_{i:0{width}d}.safetensors"
                write_state_dict(stored, tmp / target, metadata={"source": folder.name})
                # One run for all: the base fixes the neuron order, so adapters share one
                # permutation state (the r x r freedom is what the canonical form removes).
                checkpoints.append(ZooCheckpoint(file=target, accuracy=acc, run=0))
        except AdapterError as e:
            raise ZooError(str(e)) from e
        save_zoo(
            Zoo(
                path=tmp,
                architecture=arch,
                dataset=None if dataset is None else dict(dataset),
                condition={"kind": "none"},
                checkpoints=checkpoints,
                provenance={
                    "command": "import",
                    "source": str(src.resolve()),
                    "folders": [f.name for f in folders],
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
                adapter=section,
            )
        )
    return load_zoo(out, trust_builders=[builder])
