"""State dict <-> token sequence (RPG.md "Pipeline", steps 1 and 6).

A fitted `ParameterTokenizer` fixes a layout: which tensors become tokens (every float tensor
with at least one dimension and one value, except `*num_batches_tracked`), where each one's
tokens sit in the `(num_tokens, token_size)` sequence, and the per-tensor zoo statistics that
normalize it. Everything else passes through: it is stored from the first fitted state dict
and restored on decode. Pure math, no IO; `to_dict()` / `from_dict()` carry the layout as
JSON-safe data for the generator bundle.

Precision: normalization runs in float64 and only the normalized value is rounded to
float32, so `decode(encode(sd))` is off by at most float32 rounding of `(x - mean) / std`,
i.e. about `2**-24 * |x - mean|`, plus the rounding back into the tensor's own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Granularity", "ParameterTokenizer"]

Granularity = Literal["tensor", "channel"]

FORMAT_NAME = "rpg-parameter-tokenizer"
FORMAT_VERSION = 1

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
class _TensorSpec:
    """A tensor to tokenize and its zoo statistics."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    mean: float
    std: float
    var_mean: float | None  # zoo mean of a running_var before the log; None: no log transform


@dataclass(frozen=True)
class _Tokenized(_TensorSpec):
    """A tensor spec plus where its tokens sit in the sequence."""

    rows: int  # 1, or the output channels (dim 0) under "channel" granularity
    row_length: int  # values per row; tokens never straddle rows
    tokens_per_row: int
    start: int  # index of this tensor's first token

    @property
    def num_tokens(self) -> int:
        return self.rows * self.tokens_per_row


@dataclass(frozen=True)
class _Passthrough:
    """A tensor that is not generated: restored on decode exactly as fitted."""

    name: str
    value: Tensor


def _is_passthrough(name: str, tensor: Tensor) -> bool:
    return (
        not tensor.is_floating_point()
        or tensor.dim() == 0
        or tensor.numel() == 0
        or name.endswith("num_batches_tracked")
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in tokenizer data; expected e.g. 'float32'")
    return dtype


def _check_token_size(token_size: Any) -> int:
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size < 1:
        raise ValueError(f"token_size must be an integer >= 1, got {token_size!r}")
    return token_size


def _check_granularity(granularity: Any) -> Granularity:
    if granularity not in get_args(Granularity):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    return granularity


def _to_float64(name: str, tensor: Tensor, where: str) -> Tensor:
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


class ParameterTokenizer:
    """Turns a state dict into a `(num_tokens, token_size)` float32 sequence and back.

    Build one with `fit(zoo_state_dicts)` or `from_dict(saved)`; the constructor takes an
    already validated layout. Tokens of one tensor are contiguous and in state-dict order;
    NaN marks padding at the end of each tensor (or of each output channel under
    `granularity="channel"`).
    """

    def __init__(
        self,
        *,
        token_size: int,
        granularity: Granularity,
        entries: Sequence[_TensorSpec | _Passthrough],
    ) -> None:
        self._token_size = _check_token_size(token_size)
        self._granularity = _check_granularity(granularity)
        self._entries: list[_Tokenized | _Passthrough] = []
        start = 0
        for entry in entries:
            if isinstance(entry, _TensorSpec):
                entry = _place(entry, self._token_size, self._granularity, start)
                start += entry.num_tokens
            self._entries.append(entry)
        self._tokenized = [e for e in self._entries if isinstance(e, _Tokenized)]
        self._num_tokens = start

    # ----------------------------------------------------------------------------- building
    @classmethod
    def fit(
        cls,
        state_dicts: Iterable[Mapping[str, Tensor]],
        *,
        token_size: int = 256,
        granularity: Granularity = "tensor",
    ) -> ParameterTokenizer:
        """Fix the layout from a zoo of same-architecture state dicts and measure the stats.

        Each tokenized tensor is normalized by the mean over checkpoints of its per-checkpoint
        mean and (population) std; passthrough tensors are taken from the first state dict.
        ``state_dicts`` is read once, in order, and no state dict is kept after its turn (only
        running sums, plus the BatchNorm running variances, which are small), so a generator
        that loads one checkpoint at a time fits a zoo of any size in one checkpoint's memory.
        """
        token_size = _check_token_size(token_size)
        granularity = _check_granularity(granularity)
        first: Mapping[str, Tensor] | None = None
        stats: dict[str, _StreamingStats] = {}
        for index, state_dict in enumerate(state_dicts):
            if first is None:
                _check_same_architecture(state_dict, state_dict, index)  # tensors only
                first = {k: v.detach().to("cpu").clone() for k, v in state_dict.items()}
                stats = {
                    k: _StreamingStats(k) for k, v in first.items() if not _is_passthrough(k, v)
                }
            _check_same_architecture(first, state_dict, index)
            for name, accumulator in stats.items():
                accumulator.add(state_dict[name])
        if first is None:
            raise ValueError("fit() needs at least one state dict; got an empty zoo")
        entries: list[_TensorSpec | _Passthrough] = []
        for name, tensor in first.items():
            if name not in stats:
                entries.append(_Passthrough(name, tensor))
            else:
                mean, std, var_mean = stats[name].result()
                entries.append(
                    _TensorSpec(name, tuple(tensor.shape), tensor.dtype, mean, std, var_mean)
                )
        return cls(token_size=token_size, granularity=granularity, entries=entries)

    # --------------------------------------------------------------------------- properties
    @property
    def token_size(self) -> int:
        """Values per token."""
        return self._token_size

    @property
    def granularity(self) -> Granularity:
        """'tensor': tokens never straddle tensors; 'channel': nor output channels."""
        return self._granularity

    @property
    def num_tokens(self) -> int:
        """Length of the token sequence."""
        return self._num_tokens

    @property
    def num_parameters(self) -> int:
        """Number of generated scalar values (tokenized tensors only)."""
        return sum(math.prod(e.shape) for e in self._tokenized)

    @property
    def num_tensors(self) -> int:
        """Number of tokenized tensors."""
        return len(self._tokenized)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Names of the tokenized tensors; `positions()[:, 0]` indexes into this."""
        return tuple(e.name for e in self._tokenized)

    def __repr__(self) -> str:
        return (
            f"ParameterTokenizer(num_tensors={self.num_tensors}, "
            f"num_parameters={self.num_parameters}, num_tokens={self.num_tokens}, "
            f"token_size={self.token_size}, granularity={self.granularity!r})"
        )

    # ------------------------------------------------------------------------------ encoding
    def encode(self, state_dict: Mapping[str, Tensor]) -> Tensor:
        """Tokens `(num_tokens, token_size)`, float32 on CPU, NaN at padding positions."""
        self._check_layout(state_dict, "encode()")
        tokens = torch.full((self.num_tokens, self.token_size), float("nan"), dtype=torch.float32)
        for entry in self._tokenized:
            normalized = self._normalize(entry, state_dict[entry.name])
            block = tokens[entry.start : entry.start + entry.num_tokens]
            # (rows * tokens_per_row, token_size) -> (rows, tokens_per_row * token_size)
            block = block.view(entry.rows, entry.tokens_per_row * self.token_size)
            # float64 -> float32: the one rounding step of the round trip
            block[:, : entry.row_length] = normalized.view(entry.rows, entry.row_length)
        return tokens

    def normalized_vector(self, state_dict: Mapping[str, Tensor]) -> Tensor:
        """All real (non-padding) normalized values in token order, 1-D float32.

        Equal to `encode(state_dict)[padding_mask()]`; the space for L2 novelty distances.
        """
        self._check_layout(state_dict, "normalized_vector()")
        parts = [self._normalize(e, state_dict[e.name]).float() for e in self._tokenized]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32)

    def decode(self, tokens: Tensor) -> dict[str, Tensor]:
        """State dict (CPU, original dtypes and key order) from `(num_tokens, token_size)`.

        Padding positions are ignored whatever they hold (generated tokens carry numbers
        there). Values beyond a dtype's finite range are clamped to it.
        """
        expected = (self.num_tokens, self.token_size)
        if not isinstance(tokens, Tensor) or tuple(tokens.shape) != expected:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"decode() expects tokens of shape (num_tokens, token_size) = {expected}, got "
                f"{got}; decode one model at a time (e.g. tokens[i] of a batch)"
            )
        if not tokens.is_floating_point():
            raise ValueError(f"decode() expects floating-point tokens, got {tokens.dtype}")
        result: dict[str, Tensor] = {}
        for entry in self._entries:
            if isinstance(entry, _Passthrough):
                result[entry.name] = entry.value.clone()
                continue
            block = tokens[entry.start : entry.start + entry.num_tokens].detach()
            block = block.to(device="cpu", dtype=torch.float64)
            # (rows * tokens_per_row, token_size) -> (rows, tokens_per_row * token_size)
            rows = block.reshape(entry.rows, entry.tokens_per_row * self.token_size)
            values = rows[:, : entry.row_length].reshape(entry.shape)  # padding dropped
            value = _cast(_denormalize(entry, values), entry.dtype)
            if entry.var_mean is not None:
                # The float64 floor can underflow to 0 in float16: keep variances > 0.
                finfo = torch.finfo(entry.dtype)
                value = value.clamp_min(finfo.tiny * finfo.eps)  # smallest subnormal
            result[entry.name] = value
        return result

    def positions(self) -> Tensor:
        """LongTensor `(num_tokens, 2)`: (tensor index, token index inside that tensor)."""
        parts = []
        for index, entry in enumerate(self._tokenized):
            inside = torch.arange(entry.num_tokens, dtype=torch.long)
            parts.append(torch.stack([torch.full_like(inside, index), inside], dim=1))
        return torch.cat(parts) if parts else torch.zeros((0, 2), dtype=torch.long)

    def padding_mask(self) -> Tensor:
        """BoolTensor `(num_tokens, token_size)`: True where a real value sits."""
        mask = torch.zeros((self.num_tokens, self.token_size), dtype=torch.bool)
        for entry in self._tokenized:
            block = mask[entry.start : entry.start + entry.num_tokens]
            block.view(entry.rows, entry.tokens_per_row * self.token_size)[
                :, : entry.row_length
            ] = True
        return mask

    # ------------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe layout and stats (`json.dumps(..., allow_nan=False)` works)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "token_size": self.token_size,
            "granularity": self.granularity,
            "tensors": [_entry_to_json(entry) for entry in self._entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParameterTokenizer:
        """Rebuild a tokenizer from `to_dict()` output (e.g. after a JSON round trip)."""
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"not a tokenizer layout: expected format {FORMAT_NAME!r} version "
                f"{FORMAT_VERSION}, got {data.get('format')!r} version {data.get('version')!r}"
            )
        items = data.get("tensors")
        if not isinstance(items, list):
            raise ValueError("tokenizer data has no 'tensors' list; pass to_dict() output")
        return cls(
            token_size=_check_token_size(data.get("token_size")),
            granularity=_check_granularity(data.get("granularity")),
            entries=[_entry_from_json(item) for item in items],
        )

    # ------------------------------------------------------------------------------ helpers
    def _normalize(self, entry: _Tokenized, tensor: Tensor) -> Tensor:
        """Flat float64 normalized values of one tensor."""
        values = _to_float64(entry.name, tensor, "encode()").reshape(-1)
        if entry.var_mean is not None:
            if bool((values < 0).any()):
                raise ValueError(
                    f"encode(): {entry.name!r} is a running variance with negative values; "
                    "variances must be >= 0"
                )
            values = _log_variance(values, entry.var_mean)
        return (values - entry.mean) / entry.std

    def _check_layout(self, state_dict: Mapping[str, Tensor], where: str) -> None:
        names = {e.name for e in self._entries}
        missing = [e.name for e in self._entries if e.name not in state_dict]
        unexpected = [n for n in state_dict if n not in names]
        if missing or unexpected:
            raise ValueError(
                f"{where}: state dict does not match the fitted layout (missing keys "
                f"{missing[:5]}, unexpected keys {unexpected[:5]}); pass a state dict of the "
                "architecture the tokenizer was fitted on"
            )
        for entry in self._entries:
            tensor = state_dict[entry.name]
            shape = tuple(entry.value.shape) if isinstance(entry, _Passthrough) else entry.shape
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ValueError(
                    f"{where}: {entry.name!r} has shape {got}, the fitted layout expects "
                    f"{shape}; pass a state dict of the fitted architecture"
                )
            if isinstance(entry, _Tokenized) and not tensor.is_floating_point():
                raise ValueError(
                    f"{where}: {entry.name!r} is {tensor.dtype}, the fitted layout expects a "
                    f"floating-point tensor ({_dtype_name(entry.dtype)})"
                )


def _check_same_architecture(
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


class _StreamingStats:
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
        values = _to_float64(self.name, tensor, "fit()")
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
                    values = _log_variance(values, var_mean)
                mean_sum += float(values.mean())
                std_sum += float(values.std(correction=0))
        mean, std = mean_sum / self.count, std_sum / self.count
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise ValueError(f"fit(): {self.name!r} has values too large to normalize in float64")
        return mean, (std if std >= _STD_FLOOR else 1.0), var_mean


def _place(spec: _TensorSpec, token_size: int, granularity: Granularity, start: int) -> _Tokenized:
    """Position a tensor's tokens in the sequence, starting at token `start`."""
    numel = math.prod(spec.shape)
    rows = spec.shape[0] if granularity == "channel" and len(spec.shape) >= 2 else 1
    row_length = numel // rows
    tokens_per_row = -(-row_length // token_size)  # ceil division
    return _Tokenized(
        **vars(spec), rows=rows, row_length=row_length, tokens_per_row=tokens_per_row, start=start
    )


def _entry_to_json(entry: _Tokenized | _Passthrough) -> dict[str, Any]:
    if isinstance(entry, _Tokenized):
        return {
            "name": entry.name,
            "kind": "tokens",
            "shape": list(entry.shape),
            "dtype": _dtype_name(entry.dtype),
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
        "dtype": _dtype_name(value.dtype),
        "values": values,
    }


def _entry_from_json(item: Any) -> _TensorSpec | _Passthrough:
    try:
        name, kind = str(item["name"]), item["kind"]
        shape = tuple(int(s) for s in item["shape"])
        dtype = _parse_dtype(item["dtype"])
        if kind == "passthrough":
            if dtype.is_floating_point:
                value = torch.tensor(_unjson_floats(item["values"]), dtype=torch.float64)
                return _Passthrough(name, value.to(dtype).reshape(shape))
            return _Passthrough(name, torch.tensor(item["values"], dtype=dtype).reshape(shape))
        mean, std, var_mean = float(item["mean"]), float(item["std"]), item["running_var_mean"]
        var_mean = None if var_mean is None else float(var_mean)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"malformed tensor entry in tokenizer data: {error!r}") from error
    valid_stats = math.isfinite(mean) and math.isfinite(std) and std > 0
    valid_stats &= var_mean is None or (math.isfinite(var_mean) and var_mean > 0)
    if kind != "tokens" or not valid_stats or not shape or math.prod(shape) == 0:
        raise ValueError(f"malformed tokenized entry for {name!r} in tokenizer data")
    return _TensorSpec(name, shape, dtype, mean, std, var_mean)


def _log_variance(values: Tensor, var_mean: float) -> Tensor:
    return torch.log(values / (_RV_SCALE * var_mean) + _RV_SHIFT)


def _denormalize(entry: _Tokenized, normalized: Tensor) -> Tensor:
    values = normalized * entry.std + entry.mean
    if entry.var_mean is not None:
        values = (torch.exp(values) - _RV_SHIFT).clamp_min(_RV_FLOOR) * (_RV_SCALE * entry.var_mean)
    return values


def _cast(values: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 -> dtype, clamping to the finite range so generated outliers do not become inf."""
    limit = torch.finfo(dtype).max
    return values.clamp(-limit, limit).to(dtype)
