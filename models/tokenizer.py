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
from typing import Any

import torch
from torch import Tensor

from models.tokenizer_layout import (
    Granularity,
    Passthrough,
    StreamingStats,
    TensorSpec,
    Tokenized,
    cast_finite,
    check_granularity,
    check_same_architecture,
    check_token_size,
    denormalize,
    dtype_name,
    entry_from_json,
    entry_to_json,
    is_passthrough,
    log_variance,
    place,
    to_float64,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Granularity", "ParameterTokenizer"]


FORMAT_NAME = "rpg-parameter-tokenizer"
FORMAT_VERSION = 1


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
        entries: Sequence[TensorSpec | Passthrough],
    ) -> None:
        self._token_size = check_token_size(token_size)
        self._granularity = check_granularity(granularity)
        self._entries: list[Tokenized | Passthrough] = []
        start = 0
        for entry in entries:
            if isinstance(entry, TensorSpec):
                entry = place(entry, self._token_size, self._granularity, start)
                start += entry.num_tokens
            self._entries.append(entry)
        self._tokenized = [e for e in self._entries if isinstance(e, Tokenized)]
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
        token_size = check_token_size(token_size)
        granularity = check_granularity(granularity)
        first: Mapping[str, Tensor] | None = None
        stats: dict[str, StreamingStats] = {}
        for index, state_dict in enumerate(state_dicts):
            if first is None:
                check_same_architecture(state_dict, state_dict, index)  # tensors only
                first = {k: v.detach().to("cpu").clone() for k, v in state_dict.items()}
                stats = {k: StreamingStats(k) for k, v in first.items() if not is_passthrough(k, v)}
            check_same_architecture(first, state_dict, index)
            for name, accumulator in stats.items():
                accumulator.add(state_dict[name])
        if first is None:
            raise ValueError("fit() needs at least one state dict; got an empty zoo")
        entries: list[TensorSpec | Passthrough] = []
        for name, tensor in first.items():
            if name not in stats:
                entries.append(Passthrough(name, tensor))
            else:
                mean, std, var_mean = stats[name].result()
                entries.append(
                    TensorSpec(name, tuple(tensor.shape), tensor.dtype, mean, std, var_mean)
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
            if isinstance(entry, Passthrough):
                result[entry.name] = entry.value.clone()
                continue
            block = tokens[entry.start : entry.start + entry.num_tokens].detach()
            block = block.to(device="cpu", dtype=torch.float64)
            # (rows * tokens_per_row, token_size) -> (rows, tokens_per_row * token_size)
            rows = block.reshape(entry.rows, entry.tokens_per_row * self.token_size)
            values = rows[:, : entry.row_length].reshape(entry.shape)  # padding dropped
            value = cast_finite(denormalize(entry, values), entry.dtype)
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
            "tensors": [entry_to_json(entry) for entry in self._entries],
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
            token_size=check_token_size(data.get("token_size")),
            granularity=check_granularity(data.get("granularity")),
            entries=[entry_from_json(item) for item in items],
        )

    # ------------------------------------------------------------------------------ helpers
    def _normalize(self, entry: Tokenized, tensor: Tensor) -> Tensor:
        """Flat float64 normalized values of one tensor."""
        values = to_float64(entry.name, tensor, "encode()").reshape(-1)
        if entry.var_mean is not None:
            if bool((values < 0).any()):
                raise ValueError(
                    f"encode(): {entry.name!r} is a running variance with negative values; "
                    "variances must be >= 0"
                )
            values = log_variance(values, entry.var_mean)
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
            shape = tuple(entry.value.shape) if isinstance(entry, Passthrough) else entry.shape
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ValueError(
                    f"{where}: {entry.name!r} has shape {got}, the fitted layout expects "
                    f"{shape}; pass a state dict of the fitted architecture"
                )
            if isinstance(entry, Tokenized) and not tensor.is_floating_point():
                raise ValueError(
                    f"{where}: {entry.name!r} is {tensor.dtype}, the fitted layout expects a "
                    f"floating-point tensor ({dtype_name(entry.dtype)})"
                )
