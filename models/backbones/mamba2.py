"""Mamba2 mixer in pure PyTorch, with the parameter layout of ``mamba_ssm.Mamba2``.

The mixer's state dict has the same names and shapes as the reference CUDA package's module
with its default options (``rmsnorm=True``, ``norm_before_gate=False``, ``D_has_hdim=False``,
``bias=False``, ``conv_bias=True``), so checkpoints move between the two with ``strict=True``.
When ``mamba_ssm`` imports and the input is on CUDA, the scan runs in its fused Triton kernel;
otherwise in :func:`models.backbones.ssd.ssd_chunked`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.blocks import BackboneStack, CommonOptions, ResidualBlock, make_norm
from models.backbones.ssd import ssd_chunked, ssd_recurrent


def _load_fused_scan() -> Callable[..., Any] | None:
    """mamba_ssm's fused chunked scan (CUDA + Triton), or None where it does not import."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except (ImportError, OSError, RuntimeError):  # not installed, or a broken CUDA/Triton setup
        return None
    return mamba_chunk_scan_combined


_fused_scan = _load_fused_scan()

__all__ = ["HAS_FUSED_KERNEL", "Mamba2", "MambaOptions", "RMSNormGated", "build_mamba"]

HAS_FUSED_KERNEL: bool = _fused_scan is not None

ScanMode = Literal["auto", "chunked", "recurrent"]


class RMSNormGated(nn.Module):
    """RMSNorm gated by SiLU(z), normalized per group of ``group_size`` channels.

    With ``norm_before_gate=False`` (Mamba2's default): ``rmsnorm(x * silu(z)) * weight``;
    otherwise ``rmsnorm(x) * weight * silu(z)``. Computed in (at least) float32, returned in
    x's dtype.
    Holds one parameter, ``weight`` (d,), like ``mamba_ssm``'s gated RMSNorm.
    """

    def __init__(
        self,
        d: int,
        *,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
    ) -> None:
        super().__init__()
        group_size = d if group_size is None else group_size
        if group_size < 1 or d % group_size != 0:
            raise ValueError(f"group_size ({group_size}) must divide the normalized size ({d})")
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """Normalize ``x`` (..., d), gated by ``z`` (..., d) when given."""
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)  # float64 stays float64
        x = x.to(compute)
        gate = F.silu(z.to(compute)) if z is not None else None
        if gate is not None and not self.norm_before_gate:
            x = x * gate
        groups = x.reshape(*x.shape[:-1], -1, self.group_size)  # (..., d) -> (..., d/gs, gs)
        groups = groups * torch.rsqrt(groups.square().mean(dim=-1, keepdim=True) + self.eps)
        out = groups.reshape(x.shape) * self.weight.to(compute)  # (..., d/gs, gs) -> (..., d)
        if gate is not None and self.norm_before_gate:
            out = out * gate
        return out.to(dtype)


class Mamba2(nn.Module):
    """Mamba2 mixer: (b, L, d_model) -> (b, L, d_model), causal in L.

    With ``d_inner = expand * d_model``, ``nheads = d_inner // headdim`` and
    ``conv_dim = d_inner + 2 * ngroups * d_state``, the parameters are exactly those of
    ``mamba_ssm.Mamba2`` with default options:

    ===================  ==================================================
    name                 shape
    ===================  ==================================================
    ``in_proj.weight``   (2*d_inner + 2*ngroups*d_state + nheads, d_model)
    ``conv1d.weight``    (conv_dim, 1, d_conv)
    ``conv1d.bias``      (conv_dim,)
    ``dt_bias``          (nheads,)
    ``A_log``            (nheads,)
    ``D``                (nheads,)
    ``norm.weight``      (d_inner,)
    ``out_proj.weight``  (d_model, d_inner)
    ===================  ==================================================

    ``in_proj``'s output splits, in order, into z (d_inner), x (d_inner), B (ngroups*d_state),
    C (ngroups*d_state) and dt (nheads). Init as in the reference: dt log-uniform in
    [dt_min, dt_max] (floored at dt_init_floor) stored through the inverse softplus in
    ``dt_bias``; A uniform in ``A_init_range`` stored as ``A_log = log(A)``; D = 1.
    ``chunk_size`` only changes speed and memory, never the result (up to rounding).
    ``use_kernel=False`` forces the pure-PyTorch scan even where the fused kernel exists.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        A_init_range: Sequence[float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_kernel: bool = True,
    ) -> None:
        super().__init__()
        sizes = {
            "d_model": d_model,
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "headdim": headdim,
            "ngroups": ngroups,
            "chunk_size": chunk_size,
        }
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Mamba2: {name} must be a positive int; got {value!r}")
        d_inner = expand * d_model
        if d_inner % headdim != 0:
            raise ValueError(
                f"Mamba2: expand * d_model = {d_inner} is not a multiple of headdim = {headdim}; "
                f"pick a headdim that divides {d_inner} (e.g. {math.gcd(d_inner, headdim)})"
            )
        nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(
                f"Mamba2: nheads = {nheads} (expand * d_model / headdim) is not a multiple of "
                f"ngroups = {ngroups}; use an ngroups that divides {nheads}"
            )
        lo, hi = (float(v) for v in A_init_range)
        if not 0 < lo <= hi:
            raise ValueError(
                f"Mamba2: A_init_range must satisfy 0 < low <= high; got {A_init_range!r}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")

        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.expand, self.headdim, self.ngroups = expand, headdim, ngroups
        self.d_inner, self.nheads, self.chunk_size = d_inner, nheads, chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.use_kernel = use_kernel

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=True,
        )
        # dt = softplus(raw + dt_bias): store the inverse softplus of a log-uniform sample, so
        # raw = 0 starts at a spread of time scales. log(expm1(dt)) written stably for small dt.
        log_dt = torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            # The reference's optimizer grouping reads this flag; decaying these hurts.
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.norm = RMSNormGated(
            d_inner, eps=1e-5, group_size=d_inner // ngroups, norm_before_gate=False
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _use_fused_kernel(self, u: Tensor) -> bool:
        """The fused kernel runs only where it exists: mamba_ssm imported and u on CUDA."""
        return self.use_kernel and _fused_scan is not None and u.is_cuda

    def forward(self, u: Tensor, *, scan: ScanMode = "auto") -> Tensor:
        """Mix ``u`` (b, L, d_model) along L.

        ``scan``: "auto" uses the fused kernel when available (``mamba_ssm`` imports, input on
        CUDA, ``use_kernel``), else the chunked scan; "chunked" / "recurrent" force a
        pure-PyTorch scan (the recurrent one is the step-by-step reference, for tests).
        """
        d_in = self.in_proj.in_features  # d_model, unless a wider layer reads a narrower one
        if u.dim() != 3 or u.shape[-1] != d_in:
            raise ValueError(f"Mamba2 expects (batch, length, {d_in}); got {tuple(u.shape)}")
        L = u.shape[1]
        zxbcdt = self.in_proj(u)  # (b, L, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        # The depthwise conv pads d_conv - 1 on both sides; keeping the first L outputs makes it
        # causal. It runs as a 2-D conv on (b, conv_dim, 1, L) laid out channels last (the
        # in_proj output as it is), which leaves its output time-major, (b, L, conv_dim), as
        # the scan reads it: 1.7x faster forward + backward than conv1d and the transposes
        # around it (docs/benchmarks, Training speed).
        weight = self.conv1d.weight.unsqueeze(2)  # (conv_dim, 1, 1, d_conv)
        xBC = F.conv2d(
            xBC.transpose(1, 2).unsqueeze(2),  # (b, conv_dim, 1, L), channels fastest
            weight,
            self.conv1d.bias,
            padding=(0, self.d_conv - 1),
            groups=self.conv_dim,
        )
        xBC = xBC[..., :L].squeeze(2).transpose(1, 2)  # (b, L, conv_dim)
        out, _ = self._scan(xBC, z, dt, scan, None)
        return out

    num_states = 2  # see initial_state

    def initial_state(self, u: Tensor) -> tuple[Tensor, ...]:
        """Zero (conv inputs (b, conv_dim, d_conv - 1), SSM state (b, h, p, n)) in float32."""
        b = u.shape[0]
        conv = u.new_zeros(b, self.conv_dim, self.d_conv - 1, dtype=torch.float32)
        ssm = u.new_zeros(b, self.nheads, self.headdim, self.d_state, dtype=torch.float32)
        return conv, ssm

    def forward_chunk(
        self, u: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Mix one piece ``u`` (b, l, d_model) of a longer sequence from the carried state.

        The state is the last ``d_conv - 1`` inputs of the causal conv and the SSM state.
        """
        conv_state, ssm_state = state
        zxbcdt = self.in_proj(u)  # (b, l, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC_t = xBC.transpose(1, 2)  # (b, l, conv_dim) -> (b, conv_dim, l)
        # (b, conv_dim, d_conv - 1 + l): the previous piece's last inputs, then this piece's.
        full = torch.cat([conv_state.to(xBC_t.dtype), xBC_t], dim=-1)
        # A copy, not a view: a view would keep all of `full` alive as long as the state lives.
        new_conv = full[..., full.shape[-1] - (self.d_conv - 1) :].clone()  # (b, conv_dim, k-1)
        weight, bias = self.conv1d.weight, self.conv1d.bias
        xBC = F.conv1d(full, weight, bias, groups=self.conv_dim).transpose(1, 2)  # (b, l, conv)
        out, new_ssm = self._scan(xBC, z, dt, "auto", ssm_state)
        assert new_ssm is not None  # asked for with an initial state
        return out, (new_conv, new_ssm.clone())  # a copy, for the same reason

    def _scan(
        self, xBC: Tensor, z: Tensor, dt: Tensor, scan: ScanMode, initial: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """SiLU, the SSD scan from ``initial`` and the gated output projection.

        (b, L, conv_dim) conv outputs, z (b, L, d_inner), raw dt (b, L, h) -> (b, L, d_model)
        and the SSM state after the last step (b, h, p, n); the fused kernel returns that
        state only when asked (``initial`` given).
        """
        b, L, _ = xBC.shape
        g, n, h, p = self.ngroups, self.d_state, self.nheads, self.headdim
        xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [self.d_inner, g * n, g * n], dim=-1)
        x = x.reshape(b, L, h, p)  # (b, L, d_inner) -> (b, L, h, p)
        B = B.reshape(b, L, g, n)  # (b, L, g*n) -> (b, L, g, n)
        C = C.reshape(b, L, g, n)
        # At least float32: exp of a half-precision A_log can round a slow decay to 0 or -inf.
        compute = torch.promote_types(self.A_log.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(compute))  # (h,)

        kernel = _fused_scan if scan == "auto" and self._use_fused_kernel(xBC) else None
        if kernel is not None:
            # The kernel adds dt_bias and applies softplus itself, in float32.
            kwargs: dict[str, Any] = {"D": self.D, "z": None, "dt_bias": self.dt_bias}
            if initial is not None:  # a piece of a longer sequence: carry the state through
                kwargs.update(initial_states=initial, return_final_states=True)
            result = kernel(x, dt, A, B, C, chunk_size=self.chunk_size, dt_softplus=True, **kwargs)
            y, final = result if initial is not None else (result, None)
        elif scan in ("auto", "chunked", "recurrent"):
            dt = F.softplus(dt.to(compute) + self.dt_bias.to(compute))  # (b, L, h)
            if scan == "recurrent":
                y, final = ssd_recurrent(x, dt, A, B, C, D=self.D, initial_states=initial)
            else:
                y, final = ssd_chunked(
                    x, dt, A, B, C, self.chunk_size, D=self.D, initial_states=initial
                )
        else:
            raise ValueError(f"scan must be 'auto', 'chunked' or 'recurrent'; got {scan!r}")
        y = y.reshape(b, L, self.d_inner)  # (b, L, h, p) -> (b, L, d_inner)
        return self.out_proj(self.norm(y, z)), final


@dataclass
class MambaOptions(CommonOptions):
    """Options of the ``mamba`` backbone (the mixer's keyword arguments, plus the norms')."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 64
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    use_kernel: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.A_init_range) != 2:
            raise ValueError(
                f"A_init_range must be two numbers (low, high); got {self.A_init_range!r}"
            )
        # JSON configs give a list; keep a tuple so options compare and print the same.
        self.A_init_range = (float(self.A_init_range[0]), float(self.A_init_range[1]))


def build_mamba(d_model: int, num_layers: int, options: MambaOptions) -> BackboneStack:
    """A stack of ``num_layers`` pre-norm residual Mamba2 blocks and a final norm."""
    mixer_kwargs = {k: v for k, v in vars(options).items() if k not in CommonOptions.names()}
    layers = [
        ResidualBlock(
            Mamba2(d_model, **mixer_kwargs), make_norm(options.norm, d_model, options.norm_eps)
        )
        for _ in range(num_layers)
    ]
    return BackboneStack(
        "mamba", d_model, layers, make_norm(options.norm, d_model, options.norm_eps)
    )
