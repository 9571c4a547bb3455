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

import math
from collections.abc import Callable
from typing import Any

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


def _decay_floor(dtype: torch.dtype) -> float:
    """A log-decay just above the log of the smallest normal number of ``dtype``: -86.3 for
    float32, -707.4 for float64.

    Log-decays are clamped here before ``exp``: near and below log(tiny), exp returns a
    subnormal or 0, and its vectorised CPU kernel takes a slow path that costs 10-100x a normal
    exp. A decay held at e * tiny (3e-38 in float32) instead of 0 changes nothing at the
    working precision.
    """
    return math.log(torch.finfo(dtype).tiny) + 1.0


def _exp_decay(log_decay: Tensor) -> Tensor:
    """``exp`` of log-decays (<= 0), clamped at :func:`_decay_floor` (keeps exp on its fast path)."""
    return torch.exp(log_decay.clamp(min=_decay_floor(log_decay.dtype)))


def _sum_heads(t: Tensor) -> Tensor:
    """Sum a per-head gradient (b, g, r, ...) over the r heads sharing a group -> (b, g, 1, ...)."""
    return t.sum(dim=2, keepdim=True)


class _HeadsFirstScan(torch.autograd.Function):
    """The chunked scan on inputs already laid out heads-first, with a hand-written backward.

    Every tensor has the layout (b, g, r, c, q, .): batch, group, head in the group, chunk,
    step in the chunk. Then every contraction is a batched matmul over contiguous blocks, and
    the backward needs no more than the forward's own products (autograd's version saved and
    revisited several (q, q) tensors per head and copied for every einsum).

    ``cs`` is the log-decay from each chunk's start, cumulated in float64: ``cs_l - cs_s`` is
    then exact to the compute dtype even when both are huge (a fast-decaying chunk), where a
    float32 difference would be garbage. Its gradient is returned in float64 too.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        dt: Tensor,
        cs: Tensor,
        B: Tensor,
        C: Tensor,
        init: Tensor,
        skip: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        # x (b, g, r, c, q, p); dt (b, g, r, c, q); cs (b, g, r, c, q) float64;
        # B, C (b, g, 1, c, q, n); init (b, g, r, p, n); skip (g, r, 1, 1, 1 or p), the D term.
        c, q = cs.shape[-2:]
        dtype = x.dtype
        xdt = x * dt.unsqueeze(-1)  # (b, g, r, c, q, p)

        # 1. Within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(cs_l - cs_s) xdt_s. One clamp
        # masks and floors the log-decays: above the diagonal (s > l) they become 0 (and the
        # mask on CB zeroes those entries), below it they stop at the floor.
        lower = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
        lo = torch.zeros(q, q, dtype=dtype, device=x.device).masked_fill_(
            lower, _decay_floor(dtype)
        )
        hi = torch.zeros(q, q, dtype=dtype, device=x.device).masked_fill_(lower, math.inf)
        # cs_l - cs_s to float32 precision without a float64 (q, q) tensor (whose subtraction
        # and rounding take 3x as long): split cs = hi + lo into two float32 parts and take the
        # differences of each. lo holds what rounding cs to hi lost, so the sum of the two
        # (correctly rounded) differences is the float64 difference to a few float32 ulps.
        cs_hi = cs.to(dtype)  # (b, g, r, c, q)
        decay = cs_hi.unsqueeze(-1) - cs_hi.unsqueeze(-2)  # (b, g, r, c, q, q)
        if dtype != cs.dtype:
            cs_lo = (cs - cs_hi).to(dtype)  # (b, g, r, c, q)
            decay.add_(cs_lo.unsqueeze(-1)).sub_(cs_lo.unsqueeze(-2))
        decay.clamp_(min=lo, max=hi).exp_()
        CB = torch.matmul(C, B.transpose(-1, -2)).mul_(lower)  # (b, g, 1, c, q, q)
        scores = decay * CB  # (b, g, r, c, q, q)
        y = torch.matmul(scores, xdt)  # (b, g, r, c, q, p)

        # 2. The state each chunk builds from its own inputs, as of its last step: B_s
        # weighted by its decay to the chunk end, exp(cs_last - cs_s), taken in float64.
        to_end = _exp_decay((cs[..., -1:] - cs).to(dtype))  # (b, g, r, c, q)
        B_end = B * to_end.unsqueeze(-1)  # (b, g, r, c, q, n)
        chunk_states = torch.matmul(xdt.transpose(-1, -2), B_end)  # (b, g, r, c, p, n)

        # 3. Pass states across chunk boundaries, one chunk at a time: the state entering
        # chunk z + 1 is the one entering chunk z, decayed across it, plus chunk z's own.
        across = _exp_decay(cs[..., -1].to(dtype)).unsqueeze(-1)  # (b, g, r, c, 1)
        entering = torch.empty_like(chunk_states)  # (b, g, r, c, p, n)
        state = init  # (b, g, r, p, n)
        for z in range(c):
            entering[:, :, :, z] = state
            state = torch.addcmul(chunk_states[:, :, :, z], state, across[:, :, :, z, None])

        # 4. What the entering state contributes to each step of its chunk: C_l weighted by
        # the decay from the chunk start, exp(cs_l).
        from_start = _exp_decay(cs.to(dtype))  # (b, g, r, c, q)
        C_start = C * from_start.unsqueeze(-1)  # (b, g, r, c, q, n)
        y.view(-1, q, y.size(-1)).baddbmm_(  # y += C_start @ entering^T, per (b, g, r, c)
            C_start.view(-1, q, C.size(-1)), entering.view(-1, *entering.shape[-2:]).transpose(1, 2)
        )
        if skip is not None:
            y.addcmul_(x, skip)  # y += D * x
        ctx.save_for_backward(
            x,
            dt,
            B,
            C,
            skip,
            xdt,
            decay,
            scores,
            lower,
            to_end,
            B_end,
            across,
            entering,
            from_start,
            C_start,
        )
        return y, state

    @staticmethod
    def backward(ctx: Any, dy: Tensor, d_final: Tensor) -> tuple[Tensor | None, ...]:
        (
            x,
            dt,
            B,
            C,
            skip,
            xdt,
            decay,
            scores,
            lower,
            to_end,
            B_end,
            across,
            entering,
            from_start,
            C_start,
        ) = ctx.saved_tensors
        c = entering.size(3)
        dy = dy.contiguous()  # (b, g, r, c, q, p)

        # 4. y += C_start @ entering^T
        d_C_start = torch.matmul(dy, entering)  # (b, g, r, c, q, n)
        d_entering = torch.matmul(dy.transpose(-1, -2), C_start)  # (b, g, r, c, p, n)
        d_C = _sum_heads(d_C_start * from_start.unsqueeze(-1))  # (b, g, 1, c, q, n)
        # d from_start, times from_start: the gradient of its log, cs.
        # The gradients of cs are summed in float64: the cumsum's backward (a reverse cumsum)
        # cancels most of them against each other, as the forward's cs_l - cs_s would.
        f64 = torch.float64
        d_cs = (d_C_start * C).sum(dim=-1, dtype=f64).mul_(from_start)  # (b, g, r, c, q)

        # 3. Run the state passing backwards: d_states[z] is the gradient of the state after
        # chunk z, which is also that of chunk z's own state.
        d_states = torch.empty_like(entering)  # (b, g, r, c, p, n)
        d_state = d_final  # (b, g, r, p, n)
        for z in reversed(range(c)):
            d_states[:, :, :, z] = d_state
            d_state = torch.addcmul(d_entering[:, :, :, z], d_state, across[:, :, :, z, None])
        d_init = d_state
        # d across, times across: the gradient of its log, cs_last.
        d_cs_last = (d_states * entering).sum(dim=(-2, -1), dtype=f64) * across.squeeze(-1)

        # 2. chunk_states = xdt^T @ B_end
        d_xdt = torch.matmul(B_end, d_states.transpose(-1, -2))  # (b, g, r, c, q, p)
        d_B_end = torch.matmul(xdt, d_states)  # (b, g, r, c, q, n)
        d_B = _sum_heads(d_B_end * to_end.unsqueeze(-1))  # (b, g, 1, c, q, n)
        d_log_to_end = (d_B_end * B).sum(dim=-1, dtype=f64).mul_(to_end)  # (b, g, r, c, q)
        d_cs -= d_log_to_end
        d_cs_last += d_log_to_end.sum(dim=-1)

        # 1. y = (decay * CB) @ xdt, decay = exp(cs_l - cs_s).
        d_scores = torch.matmul(dy, xdt.transpose(-1, -2))  # (b, g, r, c, q, q)
        d_xdt.view(-1, *xdt.shape[-2:]).baddbmm_(  # d_xdt += scores^T @ dy
            scores.view(-1, *scores.shape[-2:]).transpose(1, 2), dy.view(-1, *dy.shape[-2:])
        )
        d_CB = _sum_heads(d_scores * decay).mul_(lower)  # (b, g, 1, c, q, q)
        d_B += torch.matmul(d_CB.transpose(-1, -2), C)  # CB = C @ B^T
        d_C += torch.matmul(d_CB, B)
        d_log_decay = d_scores.mul_(scores)  # (b, g, r, c, q, q)
        d_cs += d_log_decay.sum(dim=-1, dtype=f64) - d_log_decay.sum(dim=-2, dtype=f64)
        d_cs[..., -1] += d_cs_last

        d_x = d_xdt * dt.unsqueeze(-1)  # (b, g, r, c, q, p)
        d_dt = (d_xdt * x).sum(dim=-1)  # (b, g, r, c, q)
        d_skip = None
        if skip is not None:
            d_x.addcmul_(dy, skip)
            d_skip = (dy * x).sum_to_size(skip.shape)  # (g, r, 1, 1, 1 or p)
        return d_x, d_dt, d_cs, d_B, d_C, d_init, d_skip


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


def _dot(s: Tensor, t: Tensor) -> Tensor:
    """Sum over the last dim (channels) of s * t."""
    return torch.linalg.vecdot(s, t)


class _FactoredScan(torch.autograd.Function):
    """The chunked scan on inputs laid out chunk-first, with a hand-written backward.

    Layout: x is (b, g, c, q, r, p) (batch, group, chunk, step in the chunk, head in the group,
    channel), the order of the input itself; per-head scalars (dt and the log-decays) are
    (b, g, c, q, r) and B, C (b, g, c, q, n). Each chunk's x is one (q, r*p) matrix. With
    u = exp(cs - m), v = exp(m - cs) and e = exp(m) (m = cs_last / 2, per chunk and head),
    exp(cs_l - cs_s) = u_l v_s, exp(cs_l) = u_l e and exp(cs_last - cs_s) = e v_s: every decay
    scales a row (a step) of a head's block, so it moves outside the products with B and C,
    which the group's heads share, and each chunk is two matmuls over all its heads at once:

        y     = u * ([CB | C] @ [v dt x ; e entering^T])     CB strictly lower, (q, q + n)
        state = e * (v dt x)^T @ B                           the chunk's own, (r*p, n)

    The diagonal (a step's own input, decay exactly 1) is added elementwise with the D skip.
    ``cs`` is the log-decay from each chunk's start, cumulated in float64; u, v, e and the
    decays across chunks are taken from it in float64 (vectors, one number per step and head),
    then rounded once. Its gradient is returned in float64 too.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        dt: Tensor,
        cs: Tensor,
        B: Tensor,
        C: Tensor,
        init: Tensor,
        skip: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        # x (b, g, c, q, r, p); dt, cs (b, g, c, q, r), cs float64; B, C (b, g, c, q, n);
        # init (b, g, r, p, n); skip (g, 1, 1, r, 1 or p), the D term.
        b, g, c, q, r, p = x.shape
        n = B.size(-1)
        dtype = x.dtype
        cs_last = cs[..., -1:, :]  # (b, g, c, 1, r)
        mid = cs_last / 2
        u = (cs - mid).exp_().to(dtype)  # (b, g, c, q, r)
        v = (mid - cs).exp_().to(dtype)
        e = mid.exp_().to(dtype).squeeze(-2)[..., None, None]  # (b, g, c, r, 1, 1)
        across = _exp_decay(cs_last.squeeze(-2)).to(dtype)[..., None, None]  # (b, g, c, r, 1, 1)

        # The two operands of the product: [CB | C] and [v dt x ; e entering^T].
        strict = torch.ones(q, q, dtype=torch.bool, device=x.device).tril(-1)
        left = torch.empty(b, g, c, q, q + n, dtype=dtype, device=x.device)
        CB = torch.matmul(C, B.transpose(-1, -2), out=left[..., :q])  # (b, g, c, q, q)
        cb_diag = CB.diagonal(dim1=-2, dim2=-1).clone()  # (b, g, c, q)
        CB.mul_(strict)
        left[..., q:] = C
        right = torch.empty(b, g, c, q + n, r * p, dtype=dtype, device=x.device)
        vx = right[..., :q, :]  # (b, g, c, q, r*p)
        torch.mul(x, (dt * v).unsqueeze(-1), out=vx.view(b, g, c, q, r, p))

        # The state each chunk builds from its own inputs, as of its last step.
        chunk_states = torch.matmul(vx.transpose(-1, -2), B)  # (b, g, c, r*p, n)
        chunk_states = chunk_states.view(b, g, c, r, p, n).mul_(e)

        # Pass states across chunk boundaries, one chunk at a time: the state entering chunk
        # z + 1 is the one entering chunk z, decayed across it, plus chunk z's own.
        entering = torch.empty_like(chunk_states)  # (b, g, c, r, p, n)
        state = init  # (b, g, r, p, n)
        for z in range(c):
            entering[:, :, z] = state
            state = torch.addcmul(chunk_states[:, :, z], state, across[:, :, z])

        right[..., q:, :].view(b, g, c, n, r, p).copy_((entering * e).permute(0, 1, 2, 5, 3, 4))
        y = torch.matmul(left, right).view_as(x).mul_(u.unsqueeze(-1))  # (b, g, c, q, r, p)

        # The diagonal (C_l . B_l) dt_l x_l and the skip D x_l: one scale per step and head
        # (and D per channel where it is).
        diag = cb_diag.unsqueeze(-1) * dt  # (b, g, c, q, r)
        if skip is not None and skip.size(-1) == 1:
            diag = diag + skip[..., 0]
        out = torch.addcmul(y, x, diag.unsqueeze(-1))
        if skip is not None and skip.size(-1) != 1:
            out.addcmul_(x, skip)
        ctx.save_for_backward(
            x, dt, B, C, skip, strict, left, right, cb_diag, diag, u, v, e, y, across, entering,
            state,
        )  # fmt: skip
        return out, state

    @staticmethod
    def backward(ctx: Any, dy: Tensor, d_final: Tensor) -> tuple[Tensor | None, ...]:
        (
            x, dt, B, C, skip, strict, left, right, cb_diag, diag, u, v, e, y, across, entering,
            final,
        ) = ctx.saved_tensors  # fmt: skip
        b, g, c, q, r, p = x.shape
        n = B.size(-1)
        f64 = torch.float64
        dy = dy.contiguous()  # (b, g, c, q, r, p)

        # A term of y that starts at step s and ends at step l (or at the chunk's end) has the
        # decay exp(cs_l - cs_s): its gradient goes to d_cs_l and, negated, to d_cs_s. The rows
        # (terms ending at l) are <dy_l, y_l>, as u_l and e both scale with exp(cs_l); the
        # columns are v_s dt_s <d vx_s, x_s>; m is a constant of every product of factors, so it
        # has no gradient. (No decay in a factored chunk is below e^-96, so these float32 sums
        # lose nothing that the reverse cumsum of the cumsum's backward would need.)
        dyu = (dy * u.unsqueeze(-1)).view(b, g, c, q, r * p)
        d_left = torch.matmul(dyu, right.transpose(-1, -2))  # (b, g, c, q, q + n)
        d_right = torch.matmul(left.transpose(-1, -2), dyu)  # (b, g, c, q + n, r*p)
        d_CB, d_C = d_left[..., :q], d_left[..., q:]
        d_entering = d_right[..., q:, :].view(b, g, c, n, r, p).permute(0, 1, 2, 4, 5, 3) * e
        d_cs = _dot(dy, y).to(f64)  # (b, g, c, q, r)

        # Run the state passing backwards: d_states[z] is the gradient of the state after
        # chunk z, which is also that of chunk z's own state.
        d_states = torch.empty_like(entering)  # (b, g, c, r, p, n)
        d_state = d_final  # (b, g, r, p, n)
        for z in reversed(range(c)):
            d_states[:, :, z] = d_state
            d_state = torch.addcmul(d_entering[:, :, z], d_state, across[:, :, z])
        d_init = d_state
        # cs_last scales everything in the state after its chunk (the entering state decays
        # by exp(cs_last), each input by exp(cs_last - cs_s)): its gradient is <d state, state>.
        d_cs_last = torch.empty(b, g, c, r, dtype=f64, device=x.device)
        d_cs_last[:, :, :-1] = (d_states[:, :, :-1] * entering[:, :, 1:]).sum(dim=(-2, -1))
        d_cs_last[:, :, -1] = (d_states[:, :, -1] * final).sum(dim=(-2, -1))
        d_cs[..., -1, :] += d_cs_last

        # The chunk's own state, e * vx^T @ B, vx = v dt x (the top of right).
        e_d_states = (d_states * e).view(b, g, c, r * p, n)
        d_vx = torch.baddbmm(  # d_right's top + B @ (e d_states)^T, per chunk
            d_right[..., :q, :].reshape(-1, q, r * p),
            B.reshape(-1, q, n),
            e_d_states.reshape(-1, r * p, n).transpose(1, 2),
        ).view_as(x)
        d_B = torch.matmul(right[..., :q, :], e_d_states)  # (b, g, c, q, n)
        d_dt = _dot(d_vx, x).mul_(v)  # (b, g, c, q, r)
        d_cs -= (d_dt * dt).to(f64)
        d_x = d_vx.mul_((dt * v).unsqueeze(-1))

        # The diagonal and the skip: out = y + (cb_diag * dt + D) * x. Above the diagonal,
        # d_CB holds products u_l v_s that may overflow: where, not a multiply, masks them.
        d_CB = torch.where(strict, d_CB, 0.0)
        dyx = _dot(dy, x)  # (b, g, c, q, r)
        d_dt.addcmul_(dyx, cb_diag.unsqueeze(-1))
        d_CB.diagonal(dim1=-2, dim2=-1).add_((dyx * dt).sum(dim=-1))
        d_B += torch.matmul(d_CB.transpose(-1, -2), C)  # CB = C @ B^T
        d_C = d_C + torch.matmul(d_CB, B)
        d_x.addcmul_(dy, diag.unsqueeze(-1))
        d_skip = None
        if skip is not None and skip.size(-1) == 1:
            d_skip = dyx.unsqueeze(-1).sum_to_size(skip.shape)
        elif skip is not None:
            d_x.addcmul_(dy, skip)
            d_skip = (dy * x).sum_to_size(skip.shape)  # (g, 1, 1, r, p)
        return d_x, d_dt, d_cs, d_B, d_C, d_init, d_skip


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
