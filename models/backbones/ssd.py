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
across blocks through one state per block boundary. Both compute in float32 (float64 stays
float64) with autocast disabled, because the cumulative decays lose all precision in bf16.

Shapes (b: batch, L: length, h: heads, p: head dim, g: groups, n: state size):
    x (b, L, h, p), dt (b, L, h), A (h,), B and C (b, L, g, n), D (h,) or (h, p),
    initial_states and final_state (b, h, p, n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _segsum(x: Tensor) -> Tensor:
    """Segment sums of ``x`` (..., T): out[..., i, j] = x[j+1] + ... + x[i] for i >= j, else -inf.

    Summing masked copies of ``x`` directly, rather than taking ``cumsum[i] - cumsum[j]``,
    avoids the cancellation between two large negative numbers that would otherwise turn a
    long, fast-decaying sequence into garbage (or inf - inf = NaN after exp).
    """
    T = x.size(-1)
    # (..., T) -> (..., T, T); entry [i, j] holds x[i] strictly below the diagonal, 0 elsewhere.
    rows = x.unsqueeze(-1).expand(*x.shape, T)
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = torch.cumsum(rows.masked_fill(~strictly_lower, 0.0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return sums.masked_fill(~lower, float("-inf"))


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
    b, L, h, p, g, n = _check_inputs(x, dt, A, B, C, D, initial_states)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    dtype = _compute_dtype(x)
    r = h // g  # heads per group
    q = chunk_size
    c = -(-L // q)  # number of chunks, rounding up
    pad = c * q - L

    with torch.autocast(device_type=x.device.type, enabled=False):
        x_, dt_, A_, B_, C_ = (t.to(dtype) for t in (x, dt, A, B, C))
        if pad:
            x_ = F.pad(x_, (0, 0, 0, 0, 0, pad))  # (b, L, h, p) -> (b, c*q, h, p)
            dt_ = F.pad(dt_, (0, 0, 0, pad))  # (b, L, h) -> (b, c*q, h)
            B_ = F.pad(B_, (0, 0, 0, 0, 0, pad))  # (b, L, g, n) -> (b, c*q, g, n)
            C_ = F.pad(C_, (0, 0, 0, 0, 0, pad))
        xc = x_.reshape(b, c, q, g, r, p)  # (b, c*q, h, p) -> (b, c, q, g, r, p)
        dtc = dt_.reshape(b, c, q, g, r)  # (b, c*q, h) -> (b, c, q, g, r)
        Bc = B_.reshape(b, c, q, g, n)  # (b, c*q, g, n) -> (b, c, q, g, n)
        Cc = C_.reshape(b, c, q, g, n)
        # (b, c, q, g, r) -> (b, g, r, c, q): time last, for the cumulative sums.
        dA = (dtc * A_.reshape(g, r)).permute(0, 3, 4, 1, 2)
        dA_cumsum = torch.cumsum(dA, dim=-1)  # (b, g, r, c, q): log-decay from chunk start
        seg = _segsum(dA)  # (b, g, r, c, q, q): log-decay from step s to step l in a chunk
        xdt = xc * dtc.unsqueeze(-1)  # (b, c, q, g, r, p)

        # 1. Within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(seg[l, s]) dt_s x_s.
        CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)  # (b, g, c, q, q)
        scores = CB.unsqueeze(2) * torch.exp(seg)  # (b, g, r, c, q, q)
        y_diag = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, xdt)

        # 2. The state each chunk builds from its own inputs, as of its last step. The last
        # row of seg is the log-decay from each step to the chunk end, computed stably.
        decay_to_end = torch.exp(seg[..., -1, :])  # (b, g, r, c, q)
        xdt_decayed = xdt * decay_to_end.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, p)
        chunk_states = torch.einsum("bcsgn,bcsgrp->bcgrpn", Bc, xdt_decayed)  # (b, c, g, r, p, n)

        # 3. Pass states across chunk boundaries: state entering chunk z is the decayed sum of
        # the initial state and every earlier chunk's own state.
        if initial_states is None:
            init = chunk_states.new_zeros(b, 1, g, r, p, n)
        else:
            init = initial_states.to(dtype).reshape(
                b, 1, g, r, p, n
            )  # (b, h, p, n) -> (b, 1, g, r, p, n)
        states = torch.cat([init, chunk_states], dim=1)  # (b, c+1, g, r, p, n)
        chunk_totals = F.pad(dA_cumsum[..., -1], (1, 0))  # (b, g, r, c) -> (b, g, r, c+1)
        chunk_decay = torch.exp(_segsum(chunk_totals))  # (b, g, r, c+1, c+1)
        states = torch.einsum("bgrzc,bcgrpn->bzgrpn", chunk_decay, states)  # (b, c+1, g, r, p, n)
        entering, final_state = states[:, :-1], states[:, -1]

        # 4. What the entering state contributes to each step of its chunk.
        decay_from_start = torch.exp(dA_cumsum).permute(0, 3, 4, 1, 2)  # (b, c, q, g, r)
        y_off = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, entering) * decay_from_start.unsqueeze(-1)

        y = (y_diag + y_off).reshape(b, c * q, h, p)[:, :L]  # (b, c, q, g, r, p) -> (b, L, h, p)
        if D is not None:
            y = y + _skip(x_[:, :L], D.to(dtype))
        final_state = final_state.reshape(b, h, p, n)  # (b, g, r, p, n) -> (b, h, p, n)
    return y.to(x.dtype), final_state


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
