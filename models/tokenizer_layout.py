"""The layout entries behind `ParameterTokenizer`: which tensors become tokens and where they
sit (`Tokenized`), which pass through (`Passthrough`), the zoo statistics that normalize them
(`StreamingStats`, BatchNorm running_var's log transform), and their JSON form. Pure math.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

Granularity = Literal["tensor", "channel"]

__all__ = [
    "Granularity",
    "Passthrough",
    "StreamingStats",
    "TensorSpec",
    "Tokenized",
    "cast_finite",
    "check_granularity",
    "check_same_architecture",
    "check_token_size",
    "denormalize",
    "dtype_name",
    "entry_from_json",
    "entry_to_json",
    "is_passthrough",
    "log_variance",
    "parse_dtype",
    "place",
    "to_float64",
]

# A zoo std below this means "constant tensor" (fresh LayerNorm/BatchNorm weights, zero
# biases): dividing by 0 (or turning float noise into huge tokens) helps nobody, so such
# tensors are only centred (std 1.0). Precision does not suffer: float32 is relative.
_STD_FLOOR = 1e-8
# BatchNorm running_var is skewed towards 0; RPG.md's transform log(v / (0.95 m) + 0.05).
_RV_SCALE = 0.95
_RV_SHIFT = 0.05
# Smallest decoded exp(x) - 0.05 (times 0.95 m): generated variances stay strictly positive.
_RV_FLOOR = 1e-8


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to tokenize and its zoo statistics."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    mean: float
    std: float
    var_mean: float | None  # zoo mean of a running_var before the log; None: no log transform


@dataclass(frozen=True)
class Tokenized(TensorSpec):
    """A tensor spec plus where its tokens sit in the sequence."""

    rows: int  # 1, or the output channels (dim 0) under "channel" granularity
    row_length: int  # values per row; tokens never straddle rows
    tokens_per_row: int
    start: int  # index of this tensor's first token

    @property
    def num_tokens(self) -> int:
        return self.rows * self.tokens_per_row


@dataclass(frozen=True)
class Passthrough:
    """A tensor that is not generated: restored on decode exactly as fitted."""

    name: str
    value: Tensor


def is_passthrough(name: str, tensor: Tensor) -> bool:
    return (
        not tensor.is_floating_point()
        or tensor.dim() == 0
        or tensor.numel() == 0
        or name.endswith("num_batches_tracked")
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in tokenizer data; expected e.g. 'float32'")
    return dtype


def check_token_size(token_size: Any) -> int:
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size < 1:
        raise ValueError(f"token_size must be an integer >= 1, got {token_size!r}")
    return token_size


def check_granularity(granularity: Any) -> Granularity:
    if granularity not in get_args(Granularity):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    return granularity


def to_float64(name: str, tensor: Tensor, where: str) -> Tensor:
    """CPU float64 copy of a tokenized tensor, refusing values that cannot be normalized."""
    values = tensor.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"{where}: {name!r} contains NaN or inf; NaN marks padding in tokens, so only "
            "finite parameters can be tokenized (drop or repair the diverged checkpoint)"
        )
    return values


def _json_floats(values: Any) -> Any:
    """Nested lists of floats with non-finite entries spelled as strings (strict JSON)."""
    if isinstance(values, list):
        return [_json_floats(v) for v in values]
    return values if math.isfinite(values) else repr(values)  # 'nan', 'inf', '-inf'


def _unjson_floats(values: Any) -> Any:
    if isinstance(values, list):
        return [_unjson_floats(v) for v in values]
    return float(values)


def check_same_architecture(
    first: Mapping[str, Tensor], other: Mapping[str, Tensor], index: int
) -> None:
    """Every zoo member must have the first one's keys, shapes and dtypes."""
    missing = [k for k in first if k not in other]
    unexpected = [k for k in other if k not in first]
    if missing or unexpected:
        raise ValueError(
            f"state dict {index} has different keys from state dict 0 (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); a zoo must hold checkpoints of one architecture"
        )
    for key, reference in first.items():
        tensor = other[key]
        if not isinstance(tensor, Tensor) or not isinstance(reference, Tensor):
            raise TypeError(f"{key!r} is not a torch.Tensor; pass plain tensor state dicts")
        if tensor.is_complex():
            raise ValueError(f"{key!r} is complex; store real and imaginary parts separately")
        if tensor.shape != reference.shape:
            raise ValueError(
                f"{key!r} has shape {tuple(tensor.shape)} in state dict {index} but "
                f"{tuple(reference.shape)} in state dict 0; a zoo must share one architecture"
            )
        if tensor.dtype != reference.dtype:
            raise ValueError(
                f"{key!r} has dtype {tensor.dtype} in state dict {index} but {reference.dtype} "
                "in state dict 0; cast all checkpoints to one dtype first"
            )


class StreamingStats:
    """Per-tensor zoo statistics accumulated one checkpoint at a time.

    (mean, std) are averages of per-checkpoint statistics, summed in zoo order. A BatchNorm
    ``running_var`` needs the zoo mean of its raw values before its log transform, so its
    values (one small vector per checkpoint) are kept until ``result()``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.mean_sum = 0.0
        self.std_sum = 0.0
        self.variances: list[Tensor] | None = [] if name.endswith("running_var") else None

    def add(self, tensor: Tensor) -> None:
        values = to_float64(self.name, tensor, "fit()")
        self.count += 1
        if self.variances is not None:
            self.variances.append(values)
            return
        self.mean_sum += float(values.mean())
        self.std_sum += float(values.std(correction=0))

    def result(self) -> tuple[float, float, float | None]:
        """(mean, std, running_var mean or None)."""
        var_mean = None
        mean_sum, std_sum = self.mean_sum, self.std_sum
        if self.variances is not None:
            # Only a non-negative running_var gets the log transform: its argument must stay > 0.
            if all(bool((v >= 0).all()) for v in self.variances):
                raw_mean = sum(float(v.mean()) for v in self.variances) / self.count
                var_mean = raw_mean if raw_mean > 0 else 1.0  # all-zero variances: any scale
            for values in self.variances:
                if var_mean is not None:
                    values = log_variance(values, var_mean)
                mean_sum += float(values.mean())
                std_sum += float(values.std(correction=0))
        mean, std = mean_sum / self.count, std_sum / self.count
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise ValueError(f"fit(): {self.name!r} has values too large to normalize in float64")
        return mean, (std if std >= _STD_FLOOR else 1.0), var_mean


def place(spec: TensorSpec, token_size: int, granularity: Granularity, start: int) -> Tokenized:
    """Position a tensor's tokens in the sequence, starting at token `start`."""
    numel = math.prod(spec.shape)
    rows = spec.shape[0] if granularity == "channel" and len(spec.shape) >= 2 else 1
    row_length = numel // rows
    tokens_per_row = -(-row_length // token_size)  # ceil division
    return Tokenized(
        **vars(spec), rows=rows, row_length=row_length, tokens_per_row=tokens_per_row, start=start
    )


def entry_to_json(entry: Tokenized | Passthrough) -> dict[str, Any]:
    if isinstance(entry, Tokenized):
        return {
            "name": entry.name,
            "kind": "tokens",
            "shape": list(entry.shape),
            "dtype": dtype_name(entry.dtype),
            "mean": entry.mean,
            "std": entry.std,
            "running_var_mean": entry.var_mean,
        }
    value = entry.value
    if value.is_floating_point():  # float64 holds every float16/bfloat16/float32 exactly
        values = _json_floats(value.to(torch.float64).tolist())
    else:
        values = value.tolist()
    return {
        "name": entry.name,
        "kind": "passthrough",
        "shape": list(value.shape),
        "dtype": dtype_name(value.dtype),
        "values": values,
    }


def entry_from_json(item: Any) -> TensorSpec | Passthrough:
    try:
        name, kind = str(item["name"]), item["kind"]
        shape = tuple(int(s) for s in item["shape"])
        dtype = parse_dtype(item["dtype"])
        if kind == "passthrough":
            if dtype.is_floating_point:
                value = torch.tensor(_unjson_floats(item["values"]), dtype=torch.float64)
                return Passthrough(name, value.to(dtype).reshape(shape))
            return Passthrough(name, torch.tensor(item["values"], dtype=dtype).reshape(shape))
        mean, std, var_mean = float(item["mean"]), float(item["std"]), item["running_var_mean"]
        var_mean = None if var_mean is None else float(var_mean)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"malformed tensor entry in tokenizer data: {error!r}") from error
    valid_stats = math.isfinite(mean) and math.isfinite(std) and std > 0
    valid_stats &= var_mean is None or (math.isfinite(var_mean) and var_mean > 0)
    if kind != "tokens" or not valid_stats or not shape or math.prod(shape) == 0:
        raise ValueError(f"malformed tokenized entry for {name!r} in tokenizer data")
    return TensorSpec(name, shape, dtype, mean, std, var_mean)


def log_variance(values: Tensor, var_mean: float) -> Tensor:
    return torch.log(values / (_RV_SCALE * var_mean) + _RV_SHIFT)


def denormalize(entry: Tokenized, normalized: Tensor) -> Tensor:
    values = normalized * entry.std + entry.mean
    if entry.var_mean is not None:
        values = (torch.exp(values) - _RV_SHIFT).clamp_min(_RV_FLOOR) * (_RV_SCALE * entry.var_mean)
    return values


def cast_finite(values: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 -> dtype, clamping to the finite range so generated outliers do not become inf."""
    limit = torch.finfo(dtype).max
    return values.clamp(-limit, limit).to(dtype)
