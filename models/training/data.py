"""The trainer's view of a zoo: tokens per batch, without the whole encoded zoo in memory.

A small zoo is encoded once and kept (reading files every step would only cost time); a zoo
whose encoded tokens exceed ``resident_bytes`` is read per batch, one ``.safetensors`` file
per checkpoint of the batch, so training memory does not grow with the number of
checkpoints. Either way a batch holds the same numbers: ``encode`` is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from models.heap import release_free_memory
from models.safefiles import load_safetensors
from models.tokenizer import Granularity, ParameterTokenizer

__all__ = [
    "DEFAULT_RESIDENT_BYTES",
    "ZooTokens",
    "fit_tokenizer",
    "read_state_dicts",
]

# Encoded zoos up to this size stay in memory (the digits zoos: ~2 MB; 16 ResNet-18s: 0.7 GB).
DEFAULT_RESIDENT_BYTES = 256 * 2**20


def read_state_dicts(files: Sequence[Path]) -> Iterator[dict[str, Tensor]]:
    """The checkpoints one at a time (safetensors only; each is dropped after its turn)."""
    for path in files:
        yield load_safetensors(path)


def fit_tokenizer(
    files: Sequence[Path], *, token_size: int, granularity: Granularity
) -> ParameterTokenizer:
    """Fit the tokenizer in one streaming pass over the zoo's files."""
    tokenizer = ParameterTokenizer.fit(
        read_state_dicts(files), token_size=token_size, granularity=granularity
    )
    release_free_memory()
    return tokenizer


class ZooTokens:
    """Encoded checkpoints of a zoo by index: ``batch([i, j, ...]) -> (B, L, T)`` on CPU."""

    def __init__(
        self,
        files: Sequence[Path],
        tokenizer: ParameterTokenizer,
        *,
        resident_bytes: int = DEFAULT_RESIDENT_BYTES,
    ) -> None:
        self.files = list(files)
        self.tokenizer = tokenizer
        per_checkpoint = tokenizer.num_tokens * tokenizer.token_size * 4  # float32
        self.resident = per_checkpoint * len(self.files) <= resident_bytes
        self._tokens: Tensor | None = None
        if self.resident:
            # (N, L, T); filled one checkpoint at a time (no list of N encodings first)
            self._tokens = torch.empty(len(self.files), tokenizer.num_tokens, tokenizer.token_size)
            for i, state_dict in enumerate(read_state_dicts(self.files)):
                self._tokens[i] = tokenizer.encode(state_dict)
            release_free_memory()

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> Tensor:
        """Tokens of the checkpoints at ``indices``: (B, num_tokens, token_size) float32."""
        if self._tokens is not None:
            return self._tokens[torch.as_tensor(list(indices), dtype=torch.long)]
        out = torch.empty(len(indices), self.tokenizer.num_tokens, self.tokenizer.token_size)
        for row, index in enumerate(indices):
            out[row] = self.tokenizer.encode(load_safetensors(self.files[index]))
        release_free_memory()
        return out
