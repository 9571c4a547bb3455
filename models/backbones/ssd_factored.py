"""The factored form of the chunked SSD scan (``models.backbones.ssd``): per-head decays become
row and column scales, so the heads of a group share one matmul per chunk; hand-written
backward. Only for heads whose log-decay within a chunk stays within ``ssd.FACTORED_SPAN``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.backbones.ssd_heads_first import _exp_decay


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
