"""The heads-first form of the chunked SSD scan (``models.backbones.ssd``): one (q, q) block of
decays per head and chunk, with a hand-written backward. Every head can take it; heads whose
decay within a chunk is too fast for the factored form must (``ssd.FACTORED_SPAN``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


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
