"""Structured state-space duality (SSD): the scan inside Mamba2, in pure PyTorch.

Per head (``P`` channels, each with an ``N``-dimensional state) the model is the linear
recurrence

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: (P, N)
    y_t = h_t C_t + D * x_t                                   y_t: (P,)

with a scalar decay ``A < 0`` per head and input-dependent ``dt_t > 0``, ``B_t``, ``C_t``.
Heads are split into ``ngroups`` groups that share ``B`` and ``C`` (head ``i`` reads group
``i // (nheads // ngroups)``, the layout of ``mamba_ssm``).

``ssd_recurrent`` runs the recurrence one step at a time: slow, and obviously right.
``ssd_chunked`` computes the same outputs in blocks of ``chunk_size`` steps (Dao & Gu 2024,
"Transformers are SSMs", Sec. 6): inside a block as a masked, attention-like matrix product,
across blocks through one state per block boundary. It has two forms: heads whose decay over
a block stays within ``FACTORED_SPAN`` share one matmul per block (``_FactoredScan``), the
others get one (q, q) block of decays each (``_HeadsFirstScan``). Both compute in float32
(float64 stays float64) with autocast disabled, because the cumulative decays lose all
precision in bf16.

Shapes (b: batch, L: length, h: heads, p: head dim, g: groups, n: state size):
    x (b, L, h, p), dt (b, L, h), A (h,), B and C (b, L, g, n), D (h,) or (h, p),
    initial_states and final_state (b, h, p, n).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.backbones.ssd_factored import _FactoredScan
from models.backbones.ssd_heads_first import _HeadsFirstScan

__all__ = ["ssd_chunked", "ssd_recurrent"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_states: Tensor | None,
) -> tuple[int, int, int, int, int, int]:
    """Validate shapes up front; returns (b, L, h, p, g, n)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, length, nheads, headdim); got shape {tuple(x.shape)}")
    b, L, h, p = x.shape
    if L < 1:
        raise ValueError("sequence length must be >= 1; got an empty sequence")
    if dt.shape != (b, L, h):
        raise ValueError(
            f"dt must have shape {(b, L, h)} (batch, length, nheads) to match x; got {tuple(dt.shape)}"
        )
    if A.shape != (h,):
        raise ValueError(f"A must have shape ({h},), one decay per head; got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, L) or B.shape != C.shape:
        raise ValueError(
            "B and C must both be (batch, length, ngroups, d_state) with the batch and length of x; "
            f"got B {tuple(B.shape)} and C {tuple(C.shape)} for x {tuple(x.shape)}"
        )
    g, n = B.shape[2], B.shape[3]
    if h % g != 0:
        raise ValueError(
            f"nheads ({h}) must be a multiple of ngroups ({g}); change headdim or ngroups"
        )
    if D is not None and D.shape not in ((h,), (h, p)):
        raise ValueError(f"D must have shape ({h},) or ({h}, {p}); got {tuple(D.shape)}")
    if initial_states is not None and initial_states.shape != (b, h, p, n):
        raise ValueError(
            f"initial_states must have shape {(b, h, p, n)} (batch, nheads, headdim, d_state); "
            f"got {tuple(initial_states.shape)}"
        )
    return b, L, h, p, g, n


def _skip(x: Tensor, D: Tensor) -> Tensor:
    """The ``D * x`` skip term for x (b, L, h, p) and D (h,) or (h, p)."""
    # (h,) -> (h, 1) so it broadcasts over the head dim; (h, p) broadcasts as is.
    return x * (D.unsqueeze(-1) if D.dim() == 1 else D)


# A head takes the factored form (:class:`_FactoredScan`) when no chunk of it spans more
# than this much log-decay from its start to its end: the factors exp(cs_l - m) and
# exp(m - cs_s), m the middle of the span, then stay within exp(+-64) (6e27 and 2e-28), and
# float32 overflows only if a product's terms exceed about 5e10 (|C.B| |dt x| times the chunk
# length; ssd_chunked checks the output and redoes such a call heads-first). A head that
# forgets more than e^128 of its state within one chunk takes the heads-first form, one (q, q)
# block of decays per head and chunk. (Measured on the tiny preset's Mamba2 layers at init,
# 10 seeds: 6.6% of head chunks of 64 steps span more than 64, 1.9% more than 96, none more
# than 128; a trained digits-mlp generator's span at most 22.)
FACTORED_SPAN = 128.0


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    initial_states: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the SSD recurrence blockwise; returns ``(y, final_state)``.

    Args:
        x: (b, L, h, p) inputs. dt: (b, L, h) positive step sizes (already softplus-ed).
        A: (h,) negative decays. B, C: (b, L, g, n). chunk_size: block length (any L works:
        the tail is zero-padded, and a padded step has dt = 0, so it leaves the state alone).
        D: optional (h,) or (h, p) skip. initial_states: optional (b, h, p, n) state before x[0].

    Returns:
        y (b, L, h, p) in x's dtype, and the state after the last step (b, h, p, n) in the
        compute dtype (float32, or float64 for float64 inputs).
    """
    b, L, h, _, g, _ = _check_inputs(x, dt, A, B, C, D, initial_states)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    dtype = _compute_dtype(x)
    r = h // g  # heads per group
    q = chunk_size

    with torch.autocast(device_type=x.device.type, enabled=False):
        x_, dt_, A_, B_, C_ = (t.to(dtype) for t in (x, dt, A, B, C))
        D_ = None if D is None else D.to(dtype)
        init = None if initial_states is None else initial_states.to(dtype)
        # Each head's largest log-decay over one chunk, by its index in the group. Which heads
        # are factored depends on the data, so a step's output can change in its last bits with
        # later inputs (of its chunk, or of the sequence).
        dA = F.pad(dt_ * A_, (0, 0, 0, -L % q)).view(b, -1, q, g, r)  # (b, c, q, g, r)
        span = -dA.sum(dim=2, dtype=torch.float64).amin(dim=(0, 1, 2))  # (r,)
        fast = span > FACTORED_SPAN
        if not bool(fast.any()):
            y, final_state = _scan(_factored, x_, dt_, A_, B_, C_, q, D_, init)
        elif bool(fast.all()):
            y, final_state = _heads_first(x_, dt_, A_, B_, C_, q, D_, init)
        else:  # each set of heads in its form, then every head back in its place
            groups = [(~fast).nonzero().squeeze(1), fast.nonzero().squeeze(1)]
            parts = [
                _scan(
                    scan,
                    *(_heads(t, dim, g, idx) for t, dim in ((x_, 2), (dt_, 2), (A_, 0))),
                    B_,
                    C_,
                    q,
                    _heads(D_, 0, g, idx),
                    _heads(init, 1, g, idx),
                )
                for scan, idx in zip((_factored, _heads_first), groups, strict=True)
            ]
            order = torch.argsort(torch.cat(groups))
            y, final_state = (
                torch.cat([out[i].unflatten(dim, (g, -1)) for out in parts], dim=dim + 1)
                .index_select(dim + 1, order)
                .flatten(dim, dim + 1)
                for i, dim in ((0, 2), (1, 1))  # y (b, L, h, p), final_state (b, h, p, n)
            )
    return y.to(x.dtype), final_state


def _heads(t: Tensor | None, dim: int, g: int, idx: Tensor) -> Tensor | None:
    """The heads whose index in their group is in ``idx``, from t's heads dim ``dim`` (g groups)."""
    if t is None:
        return None
    return t.unflatten(dim, (g, -1)).index_select(dim + 1, idx).flatten(dim, dim + 1)


def _scan(scan: Callable[..., tuple[Tensor, Tensor]], *args: Any) -> tuple[Tensor, Tensor]:
    """``scan(*args)``; a factored scan whose output overflowed is redone heads-first."""
    y, state = scan(*args)
    if scan is _factored and not bool(torch.isfinite(y).all()):
        return _heads_first(*args)
    return y, state


def _heads_first(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, q: int, D: Tensor | None,
    init: Tensor | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:class:`_HeadsFirstScan` on ssd_chunked's arguments (in the compute dtype)."""
    b, L, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    c = -(-L // q)  # number of chunks, rounding up
    pad = c * q - L
    # Heads before time, time padded to whole chunks, contiguous: (b, g, r, c, q, .).
    xh = F.pad(x.transpose(1, 2), (0, 0, 0, pad))  # (b, L, h, p) -> (b, h, c*q, p)
    xh = xh.contiguous().view(b, g, r, c, q, p)
    dth = F.pad(dt.transpose(1, 2), (0, pad))  # (b, L, h) -> (b, h, c*q)
    dth = dth.contiguous().view(b, g, r, c, q)
    Bg = F.pad(B.transpose(1, 2), (0, 0, 0, pad))  # (b, L, g, n) -> (b, g, c*q, n)
    Bg = Bg.contiguous().view(b, g, 1, c, q, n)
    Cg = F.pad(C.transpose(1, 2), (0, 0, 0, pad)).contiguous().view(b, g, 1, c, q, n)
    init = x.new_zeros(b, g, r, p, n) if init is None else init.reshape(b, g, r, p, n)
    dA = dth * A.reshape(g, r, 1, 1)  # (b, g, r, c, q)
    # Log-decay from the chunk start, in float64 so that its differences are exact.
    cs = torch.cumsum(dA.to(torch.float64), dim=-1)  # (b, g, r, c, q)
    # D (h,) or (h, p) -> (g, r, 1, 1, 1 or p), to scale x (b, g, r, c, q, p).
    skip = None if D is None else D.reshape(g, r, 1, 1, -1)
    y, final_state = _HeadsFirstScan.apply(xh, dth, cs, Bg, Cg, init, skip)
    y = y.reshape(b, h, c * q, p)[:, :, :L].transpose(1, 2).contiguous()  # -> (b, L, h, p)
    return y, final_state.reshape(b, h, p, n)  # (b, g, r, p, n) -> (b, h, p, n)


def _factored(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, q: int, D: Tensor | None,
    init: Tensor | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:class:`_FactoredScan` on ssd_chunked's arguments (in the compute dtype)."""
    b, L, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    c = -(-L // q)
    pad = c * q - L
    # Time padded to whole chunks, groups before chunks: (b, g, c, q, .). With one group (the
    # usual case) the permutes move nothing, and x is used in place when its channels are
    # contiguous (Mamba2's x is a slice of its conv output: rows of h*p in a wider row).
    xg = F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
    xg = xg.reshape(b, c, q, g, r, p).permute(0, 3, 1, 2, 4, 5)
    if g > 1 or xg.stride(-1) != 1:
        xg = xg.contiguous()
    dtg = F.pad(dt, (0, 0, 0, pad)) if pad else dt
    dtg = dtg.reshape(b, c, q, g, r).permute(0, 3, 1, 2, 4).contiguous()  # (b, g, c, q, r)
    Bg, Cg = (
        (F.pad(t, (0, 0, 0, 0, 0, pad)) if pad else t)
        .reshape(b, c, q, g, n)
        .permute(0, 3, 1, 2, 4)
        .contiguous()
        for t in (B, C)
    )  # (b, g, c, q, n)
    init = x.new_zeros(b, g, r, p, n) if init is None else init.reshape(b, g, r, p, n)
    dA = dtg * A.view(g, 1, 1, r)  # (b, g, c, q, r)
    cs = torch.cumsum(dA.to(torch.float64), dim=-2)  # from each chunk's start, float64
    # D (h,) or (h, p) -> (g, 1, 1, r, 1 or p), to scale x (b, g, c, q, r, p).
    skip = None if D is None else D.reshape(g, 1, 1, r, -1)
    y, final_state = _FactoredScan.apply(xg, dtg, cs, Bg, Cg, init, skip)
    y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c * q, h, p)[:, :L]  # -> (b, L, h, p)
    return y.contiguous(), final_state.reshape(b, h, p, n)


def ssd_recurrent(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_states: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference: the SSD recurrence one step at a time; same arguments and results as
    :func:`ssd_chunked` (without ``chunk_size``). O(L) Python steps: for tests and tiny inputs.
    """
    b, L, h, p, g, n = _check_inputs(x, dt, A, B, C, D, initial_states)
    dtype = _compute_dtype(x)
    r = h // g
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_, dt_, A_, B_, C_ = (t.to(dtype) for t in (x, dt, A, B, C))
        # (b, L, g, n) -> (b, L, h, n): head i reads group i // r.
        Bh = B_.repeat_interleave(r, dim=2)
        Ch = C_.repeat_interleave(r, dim=2)
        state = x_.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(dtype)
        ys = []
        for t in range(L):
            decay = torch.exp(dt_[:, t] * A_)  # (b, h)
            inp = (dt_[:, t].unsqueeze(-1) * x_[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(-2)
            state = state * decay[..., None, None] + inp  # (b, h, p, n)
            ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
        y = torch.stack(ys, dim=1)  # L x (b, h, p) -> (b, L, h, p)
        if D is not None:
            y = y + _skip(x_, D.to(dtype))
    return y.to(x.dtype), state
