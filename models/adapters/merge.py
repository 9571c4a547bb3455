"""Base + adapter: a full state dict of the base architecture, and a module that scores
adapters by merging them.

``merge_adapter`` is what ``rpg sample --merge`` writes (loadable with ``strict=True`` into the
base architecture). ``AdaptedModule`` lets evaluation code written for whole state dicts score
adapters unchanged: its ``load_state_dict`` takes an adapter state dict and merges it into the
base it wraps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.adapters.spec import KEY_PREFIX, AdapterError, LoraSpec, LoraTarget, expected_shapes

__all__ = ["AdaptedModule", "check_adapter", "delta", "merge_adapter"]


def check_adapter(
    adapter: Mapping[str, Tensor], targets: Sequence[LoraTarget], r: int, where: str
) -> None:
    """Exactly the keys and shapes the layout implies (PEFT would load others silently)."""
    want = expected_shapes(list(targets), r)
    missing = sorted(set(want) - set(adapter))
    extra = sorted(set(adapter) - set(want))
    if missing or extra:
        raise AdapterError(
            f"{where}: adapter tensors do not match its config (missing {missing[:4]}, "
            f"unexpected {extra[:4]}); PEFT would load it with those layers unadapted"
        )
    for key, shape in want.items():
        t = adapter[key]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise AdapterError(
                f"{where}: {key} is {tuple(t.shape)} {t.dtype}, its config implies {shape} float"
            )


def delta(target: LoraTarget, a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """The weight update ``scaling * B @ A`` of one layer, shaped like its weight (float64)."""
    r = a.shape[0]
    product = b.to(torch.float64).reshape(-1, r) @ a.to(torch.float64).reshape(r, -1)
    return (scaling * product).reshape(target.weight_shape)


def merge_adapter(
    base: Mapping[str, Tensor],
    adapter: Mapping[str, Tensor],
    targets: Sequence[LoraTarget],
    spec: LoraSpec,
) -> dict[str, Tensor]:
    """``base`` with every targeted weight plus its update, in the base's dtypes and order."""
    merged = {k: v.clone() for k, v in base.items()}
    for t in targets:
        weight = base[t.weight_key]
        update = delta(t, adapter[t.a_key], adapter[t.b_key], spec.scaling)
        merged[t.weight_key] = (weight.to(torch.float64) + update).to(weight.dtype)
    return merged


class AdaptedModule(nn.Module):
    """The base network whose ``load_state_dict`` takes an adapter and merges it.

    ``state_dict()`` returns the merged base weights; ``forward`` is the base's. Built once,
    it scores many adapters (``load_state_dict`` each), like a plain module scores checkpoints.
    """

    def __init__(
        self,
        base_module: nn.Module,
        base_state: Mapping[str, Tensor],
        targets: Sequence[LoraTarget],
        spec: LoraSpec,
    ) -> None:
        super().__init__()
        self.inner = base_module
        self.targets = list(targets)
        self.spec = spec
        self._base = {k: v.detach().clone() for k, v in base_state.items()}
        self.inner.load_state_dict(self._base, strict=True)

    @property
    def base_state(self) -> dict[str, Tensor]:
        """The base weights, without any adapter."""
        return self._base

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Merge the adapter ``state_dict`` into the base (checked key by key when strict)."""
        if strict:
            check_adapter(state_dict, self.targets, self.spec.r, "adapter")
        merged = merge_adapter(self._base, state_dict, self.targets, self.spec)
        return self.inner.load_state_dict(merged, strict=True)


def targets_from_keys(keys: Sequence[str], base: Mapping[str, Tensor]) -> list[LoraTarget]:
    """The adapted layers named by an adapter's keys, shaped by the base weights.

    For adapters already checked against the layout (zoo checkpoints, and samples of a
    generator trained on them, which repeat the zoo's keys): no builder needs to run.
    """
    targets = []
    for key in keys:
        if not (key.startswith(KEY_PREFIX) and key.endswith(".lora_A.weight")):
            continue
        module = key[len(KEY_PREFIX) : -len(".lora_A.weight")]
        weight = base.get(f"{module}.weight")
        if weight is None:
            raise AdapterError(f"adapter key {key} names {module!r}, which the base does not have")
        targets.append(LoraTarget(module, tuple(weight.shape)))
    if not targets:
        raise AdapterError("the adapter holds no lora_A tensors")
    return targets
