"""The one check every evaluation runs before scoring generated state dicts: the zoo's keys,
shapes and float-ness (``novelty.load_generated_dir`` reads the files, ``tasks`` samples them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from models.errors import EvaluationError

__all__ = ["check_generated"]


def check_generated(
    names: Sequence[str],
    state_dicts: Sequence[Mapping[str, Tensor]],
    reference: Mapping[str, Tensor],
) -> None:
    """Every generated state dict must have the reference's keys, shapes and float-ness."""
    for name, sd in zip(names, state_dicts, strict=True):
        missing = [k for k in reference if k not in sd]
        extra = [k for k in sd if k not in reference]
        if missing or extra:
            raise EvaluationError(
                f"{name}: keys differ from the zoo's checkpoints (missing {missing[:5]}, "
                f"unexpected {extra[:5]}); generated files must be state dicts of the zoo's "
                "architecture (sample them with the generator trained on this zoo)"
            )
        for k, ref in reference.items():
            t = sd[k]
            if (
                tuple(t.shape) != tuple(ref.shape)
                or t.is_floating_point() != ref.is_floating_point()
            ):
                raise EvaluationError(
                    f"{name}: tensor {k!r} is {tuple(t.shape)} {t.dtype}, the zoo has "
                    f"{tuple(ref.shape)} {ref.dtype}; generated files must match the zoo's "
                    "architecture"
                )
