"""One representative per LoRA adapter: the canonical form the generator learns.

A LoRA layer adds ``s * B @ A``. For any invertible r x r matrix ``M``, ``(B M)(M^-1 A)`` is
the same update, so two adapters that compute the same thing can hold unrelated tensors, and
independently trained adapters of equal quality look like different points to a generator.
The canonical form removes that freedom (docs/explanation/adapters.md):

1. take the product ``P = B @ A`` (``(out, in)``; a convolution's ``A`` flattened to
   ``(r, in * kh * kw)``), in float64;
2. its SVD ``P = U diag(sigma) V^T``, singular values sorted large to small, the first
   ``k = min(r, out, in)`` kept (``P`` has rank <= r, so nothing is lost);
3. signs fixed: each left singular vector is flipped so that its entry of largest magnitude
   is positive (the right vector flips with it);
4. the singular values split evenly: ``B' = U sqrt(sigma)``, ``A' = sqrt(sigma) V^T``; ranks
   beyond ``k`` are zero rows / columns.

``B' @ A' == B @ A`` up to float rounding, so the adapter computes the same function (and
``scaling`` is untouched). The form is unique when the singular values are distinct and
nonzero; near-ties are where it can jump, as every SVD-based choice does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from models.adapters.spec import LoraTarget

__all__ = ["canonical_pair", "canonicalize"]


def canonical_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(A', B')`` in canonical form for one layer; shapes and dtypes as given."""
    r = a.shape[0]
    a2 = a.detach().to(torch.float64).reshape(r, -1)  # (r, in) or (r, in*kh*kw)
    b2 = b.detach().to(torch.float64).reshape(b.shape[0], r)  # (out, r)
    product = b2 @ a2  # (out, in')
    u, sigma, vh = torch.linalg.svd(product, full_matrices=False)  # (out,q) (q,) (q,in')
    k = min(r, sigma.numel())
    u, sigma, vh = u[:, :k], sigma[:k], vh[:k]
    # The entry of largest magnitude of each left vector becomes positive (first on ties).
    pivot = u.abs().argmax(dim=0)  # (k,)
    sign = torch.sign(u[pivot, torch.arange(k)])  # (k,)
    sign[sign == 0] = 1.0
    u, vh = u * sign, vh * sign[:, None]
    root = sigma.clamp_min(0).sqrt()  # (k,)
    new_b = torch.zeros_like(b2)
    new_a = torch.zeros_like(a2)
    new_b[:, :k] = u * root  # (out, k)
    new_a[:k] = root[:, None] * vh  # (k, in')
    return new_a.reshape(a.shape).to(a.dtype), new_b.reshape(b.shape).to(b.dtype)


def canonicalize(adapter: Mapping[str, Tensor], targets: Sequence[LoraTarget]) -> dict[str, Tensor]:
    """The adapter state dict with every layer's ``(A, B)`` in canonical form (same keys)."""
    out = dict(adapter)
    for t in targets:
        out[t.a_key], out[t.b_key] = canonical_pair(adapter[t.a_key], adapter[t.b_key])
    return out
