"""The plain-LoRA subset of PEFT's ``adapter_config.json``, and the tensors it implies.

Supported: ``peft_type`` LORA with ``bias`` "none", no ``modules_to_save``, no DoRA, one rank
and one alpha for every module (no ``rank_pattern`` / ``alpha_pattern``), ``target_modules``
as a list of module names (PEFT's suffix match) or one regular expression (PEFT's full match),
on ``nn.Linear`` and ``nn.Conv2d`` layers. ``use_rslora`` only changes the scaling. Fields
that only matter while training (dropout, initialisation) are kept but do not change what an
adapter computes. Anything else that changes the computation is refused, naming the field.

An adapter of this kind adds ``scaling * B @ A`` to the weight of every targeted layer, with
``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` under rsLoRA). Its state dict, as
``PeftModel.save_pretrained`` writes it, holds ``base_model.model.<layer>.lora_A.weight``
``(r, in)`` and ``...lora_B.weight`` ``(out, r)`` for every targeted layer (convolutions:
``(r, in, kh, kw)`` and ``(out, r, 1, 1)``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "KEY_PREFIX",
    "AdapterError",
    "LoraSpec",
    "LoraTarget",
    "adapter_layout",
    "parse_peft_config",
]

KEY_PREFIX = "base_model.model."
SUPPORTED = (
    "plain LoRA: peft_type LORA, bias 'none', no modules_to_save, no DoRA, one r and "
    "lora_alpha for all modules (no rank_pattern / alpha_pattern), target_modules as a list "
    "of names or one regex, on Linear and Conv2d layers"
)
# Fields that never change what a loaded adapter computes (bookkeeping, training-only
# settings, initialisation schemes): read past whatever they hold.
_IGNORED = frozenset(
    {
        "base_model_name_or_path", "revision", "task_type", "inference_mode", "peft_version",
        "auto_mapping", "init_lora_weights", "lora_dropout", "loftq_config", "eva_config",
        "corda_config", "lora_ga_config", "megatron_core", "qalora_group_size",
        "ensure_weight_tying",
    }
)  # fmt: skip
# Fields that change the computation: allowed only at their plain-LoRA value.
_PLAIN: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "modules_to_save": (None, []),
    "use_dora": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "fan_in_fan_out": (False, None),
    "lora_bias": (False, None),
    "layers_to_transform": (None,),
    "layers_pattern": (None, []),
    "exclude_modules": (None, []),
    "layer_replication": (None,),
    "target_parameters": (None, []),
    "trainable_token_indices": (None,),
    "use_qalora": (False, None),
}
_KNOWN = _IGNORED | set(_PLAIN) | {"peft_type", "r", "lora_alpha", "target_modules", "use_rslora"}
MAX_TARGETS = 4096


class AdapterError(ValueError):
    """An adapter (folder, config, tensors or base) is unusable; the message says why."""


@dataclass(frozen=True)
class LoraSpec:
    """What a plain LoRA adapter is: rank, alpha, where it attaches, how it scales.

    ``target_modules``: a tuple of module names (suffix match) or one regex string (full
    match), exactly as PEFT reads them. ``task_type`` and ``base_model`` are carried into
    the folders we write (PEFT picks its model class by ``task_type``).
    """

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False
    task_type: str | None = None
    base_model: str | None = None

    @property
    def scaling(self) -> float:
        """The factor on ``B @ A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def same_adapter(self, other: LoraSpec) -> bool:
        """Whether two configs make the same kind of adapter (bookkeeping fields aside)."""
        return (self.r, self.lora_alpha, self.target_modules, self.use_rslora) == (
            other.r,
            other.lora_alpha,
            other.target_modules,
            other.use_rslora,
        )

    def matches(self, module_name: str) -> bool:
        """PEFT's rule: a regex must match the whole name; a list entry the name or its tail."""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module_name) is not None
        return any(module_name == t or module_name.endswith("." + t) for t in self.target_modules)

    def to_peft_config(self, *, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        """The ``adapter_config.json`` of a plain LoRA adapter of this kind (PEFT loads it)."""
        targets = (
            self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules)
        )
        return {
            "peft_type": "LORA",
            "task_type": self.task_type,
            "base_model_name_or_path": base_model_name_or_path or self.base_model,
            "revision": None,
            "inference_mode": True,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_dora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": None,
            "layers_pattern": None,
            "init_lora_weights": True,
        }


def _is_plain_value(value: Any) -> bool:
    return value in (None, False, {}, [], "")


def parse_peft_config(doc: Any, where: str = "adapter_config.json") -> LoraSpec:
    """A ``LoraSpec`` from a parsed ``adapter_config.json``; ``AdapterError`` if unsupported."""
    if not isinstance(doc, Mapping):
        raise AdapterError(f"{where}: must hold a JSON object")

    def fail(message: str) -> AdapterError:
        return AdapterError(f"{where}: {message}; supported is {SUPPORTED}")

    if doc.get("peft_type") != "LORA":
        raise fail(f"peft_type is {doc.get('peft_type')!r}, not 'LORA'")
    for name, allowed in _PLAIN.items():
        if name in doc and not any(doc[name] == a and type(doc[name]) is type(a) for a in allowed):
            raise fail(f"{name} is {doc[name]!r}")
    for name in sorted(set(doc) - _KNOWN):
        # A newer PEFT's field: harmless only while it is off.
        if not _is_plain_value(doc[name]):
            raise fail(f"field {name!r} is set ({doc[name]!r}) and this version does not know it")
    r = doc.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise fail(f"r must be a positive integer, got {r!r}")
    alpha = doc.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise fail(f"lora_alpha must be a finite number, got {alpha!r}")
    rslora = doc.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise fail(f"use_rslora must be true or false, got {rslora!r}")
    targets = doc.get("target_modules")
    parsed: tuple[str, ...] | str
    if isinstance(targets, str):
        if targets == "all-linear":
            raise fail("target_modules 'all-linear' depends on PEFT's model heuristics; list them")
        try:
            re.compile(targets)
        except re.error as e:
            raise fail(f"target_modules {targets!r} is not a valid regular expression ({e})") from e
        parsed = targets
    elif (
        isinstance(targets, list)
        and targets
        and len(targets) <= MAX_TARGETS
        and all(isinstance(t, str) and t for t in targets)
    ):
        parsed = tuple(sorted(set(targets)))
    else:
        raise fail(f"target_modules must be a non-empty list of names or a regex, got {targets!r}")
    task_type = doc.get("task_type")
    base = doc.get("base_model_name_or_path")
    return LoraSpec(
        r=r,
        lora_alpha=float(alpha),
        target_modules=parsed,
        use_rslora=rslora,
        task_type=task_type if isinstance(task_type, str) else None,
        base_model=base if isinstance(base, str) and base else None,
    )


@dataclass(frozen=True)
class LoraTarget:
    """One adapted layer: its name in the base, its weight's shape, its adapter keys."""

    module: str  # e.g. "fc1"
    weight_shape: tuple[int, ...]  # (out, in) or (out, in, kh, kw)

    @property
    def weight_key(self) -> str:
        """The base state dict's key of the adapted weight."""
        return f"{self.module}.weight"

    @property
    def a_key(self) -> str:
        """The adapter state dict's key of ``A``."""
        return f"{KEY_PREFIX}{self.module}.lora_A.weight"

    @property
    def b_key(self) -> str:
        """The adapter state dict's key of ``B``."""
        return f"{KEY_PREFIX}{self.module}.lora_B.weight"

    def a_shape(self, r: int) -> tuple[int, ...]:
        """``(r, in)``, or ``(r, in, kh, kw)`` for a convolution."""
        return (r, *self.weight_shape[1:])

    def b_shape(self, r: int) -> tuple[int, ...]:
        """``(out, r)``, or ``(out, r, 1, 1)`` for a convolution."""
        return (self.weight_shape[0], r, *([1] * (len(self.weight_shape) - 2)))


def adapter_layout(base: nn.Module, spec: LoraSpec) -> list[LoraTarget]:
    """The layers of ``base`` that ``spec`` adapts, in module order; refuses what PEFT would.

    Every matched module must be an ``nn.Linear`` or an ungrouped ``nn.Conv2d``; a spec that
    matches nothing is refused (PEFT raises too).
    """
    targets: list[LoraTarget] = []
    for name, module in base.named_modules():
        if not name or not spec.matches(name):
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            targets.append(LoraTarget(name, tuple(module.weight.shape)))
        else:
            raise AdapterError(
                f"target_modules matches {name!r}, a {type(module).__name__}; adapters here "
                "attach to nn.Linear and ungrouped nn.Conv2d layers only"
            )
    if not targets:
        raise AdapterError(
            f"target_modules {spec.target_modules!r} matches no layer of the base network "
            f"(its layers: {[n for n, _ in base.named_modules() if n][:10]})"
        )
    return targets


def expected_shapes(targets: list[LoraTarget], r: int) -> dict[str, tuple[int, ...]]:
    """Adapter key -> shape, for every tensor a PEFT folder of this layout must hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    for t in targets:
        shapes[t.a_key] = t.a_shape(r)
        shapes[t.b_key] = t.b_shape(r)
    return shapes
