"""Backbones: the Mamba2 mixer's mamba_ssm-compatible layout and behaviour, and the contract
every backbone kind keeps (shape, gradients, autocast, determinism, any length)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

import models.backbones.mamba2 as mamba2_module
from models.backbones import BACKBONES, BackboneStack, Mamba2, build_backbone, ssd_chunked

D_MODEL = 32
# Small options so every kind builds and runs in milliseconds.
SMALL: dict[str, dict[str, Any]] = {
    "mamba": {"d_state": 8, "headdim": 16, "chunk_size": 8},
    "lstm": {},
    "transformer": {"n_heads": 2},
    "gmlp": {"kernel": 5},
}


def small_backbone(kind: str, **extra: Any) -> BackboneStack:
    return build_backbone(kind, d_model=D_MODEL, num_layers=2, **{**SMALL[kind], **extra})


def expected_mamba_ssm_shapes(
    d_model: int,
    d_state: int = 128,
    d_conv: int = 4,
    expand: int = 2,
    headdim: int = 64,
    ngroups: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of mamba_ssm.Mamba2 (default options), from the reference's formulas."""
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    return {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


# ---------------------------------------------------------------- Mamba2 mixer


@pytest.mark.parametrize(
    "config",
    [
        {"d_model": 256, "d_state": 32, "headdim": 64},
        {"d_model": 48, "d_state": 16, "d_conv": 3, "expand": 3, "headdim": 24, "ngroups": 2},
    ],
    ids=["paper-tiny", "grouped"],
)
def test_mamba2_parameters_match_mamba_ssm(config: dict[str, Any]) -> None:
    mixer = Mamba2(**config)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == expected_mamba_ssm_shapes(**config)
    assert {name: tuple(t.shape) for name, t in mixer.state_dict().items()} == shapes  # no buffers
    for name in shapes:  # the docstring's table names every parameter
        assert f"``{name}``" in (Mamba2.__doc__ or ""), name


def test_mamba2_loads_a_mamba_ssm_shaped_state_dict() -> None:
    # A checkpoint with the reference's keys and shapes (as mamba_ssm would save it) loads strictly.
    shapes = expected_mamba_ssm_shapes(64, d_state=16, headdim=32)
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(*s, generator=gen) * 0.1 for k, s in shapes.items()}
    mixer = Mamba2(64, d_state=16, headdim=32)
    mixer.load_state_dict(state, strict=True)
    assert torch.equal(mixer.in_proj.weight, state["in_proj.weight"])


def test_mamba2_init_follows_the_reference_scheme() -> None:
    torch.manual_seed(0)
    mixer = Mamba2(512, d_state=16, headdim=8)  # 128 heads: enough samples to see the ranges
    dt = F.softplus(mixer.dt_bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.log().max() - dt.log().min() > 0.7 * math.log(100)  # spread log-uniformly
    A = mixer.A_log.detach().exp()
    assert A.min() >= 1 - 1e-5 and A.max() <= 16 + 1e-4 and A.max() - A.min() > 7
    assert torch.equal(mixer.D.detach(), torch.ones(128))
    assert torch.equal(mixer.norm.weight.detach(), torch.ones(1024))


def test_mamba2_forward_shape_and_causality() -> None:
    torch.manual_seed(0)
    mixer = Mamba2(D_MODEL, d_state=8, headdim=16, chunk_size=8)
    u = torch.randn(2, 29, D_MODEL)
    y = mixer(u)
    assert y.shape == u.shape and torch.isfinite(y).all()
    t = 17
    u2 = u.clone()
    u2[:, t] += torch.randn(D_MODEL)
    y2 = mixer(u2)
    # The past is untouched, to float rounding: the scan picks each head's form (factored or
    # heads-first) from the whole input, so later steps can move earlier outputs by an ulp.
    torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(y2[:, t], y[:, t])  # and the change is seen at t


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_chunked_and_recurrent_paths_agree(ngroups: int) -> None:
    torch.manual_seed(0)
    mixer = Mamba2(D_MODEL, d_state=8, headdim=8, ngroups=ngroups, chunk_size=8).double()
    u = torch.randn(2, 27, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(mixer(u, scan="chunked"), mixer(u, scan="recurrent"))
    torch.testing.assert_close(mixer(u), mixer(u, scan="recurrent"))  # "auto" on CPU: chunked
    mixer.chunk_size = 64
    torch.testing.assert_close(mixer(u, scan="chunked"), mixer(u, scan="recurrent"))


def reference_mamba2(
    state: dict[str, torch.Tensor], u: torch.Tensor, *, d_state: int, ngroups: int, headdim: int
) -> torch.Tensor:
    """Mamba2's forward written out from mamba_ssm's documented layout, with loops, in float64.

    in_proj splits into z, x, B, C, dt; causal depthwise conv + SiLU on (x, B, C);
    dt = softplus(dt + dt_bias); per-step recurrence; + D x; group-wise RMSNorm of y * silu(z).
    """
    w = {k: v.double() for k, v in state.items()}
    u = u.double()
    b, L, _ = u.shape
    d_inner = w["norm.weight"].shape[0]
    h, p, g, n = d_inner // headdim, headdim, ngroups, d_state
    k = w["conv1d.weight"].shape[-1]
    zxbcdt = u @ w["in_proj.weight"].T
    z, xBC, dt = (
        zxbcdt[..., :d_inner],
        zxbcdt[..., d_inner : 2 * d_inner + 2 * g * n],
        zxbcdt[..., -h:],
    )
    padded = F.pad(xBC, (0, 0, k - 1, 0))  # zeros before t = 0
    conv = w["conv1d.bias"] + sum(
        w["conv1d.weight"][:, 0, j] * padded[:, j : j + L] for j in range(k)
    )
    xBC = F.silu(conv)
    x = xBC[..., :d_inner].reshape(b, L, h, p)
    Bm = xBC[..., d_inner : d_inner + g * n].reshape(b, L, g, n)
    Cm = xBC[..., d_inner + g * n :].reshape(b, L, g, n)
    dt = F.softplus(dt + w["dt_bias"])
    A = -torch.exp(w["A_log"])
    group_of_head = torch.arange(h) // (h // g)
    state_t = torch.zeros(b, h, p, n, dtype=torch.float64)
    ys = []
    for t in range(L):
        Bt, Ct = Bm[:, t, group_of_head], Cm[:, t, group_of_head]  # (b, h, n)
        state_t = state_t * torch.exp(dt[:, t] * A)[..., None, None] + (
            dt[:, t, :, None, None] * x[:, t, :, :, None] * Bt[:, :, None, :]
        )
        ys.append((state_t * Ct[:, :, None, :]).sum(-1) + w["D"][:, None] * x[:, t])
    y = torch.stack(ys, dim=1).reshape(b, L, d_inner) * F.silu(z)
    y = y.reshape(b, L, g, d_inner // g)
    y = (y / torch.sqrt(y.square().mean(-1, keepdim=True) + 1e-5)).reshape(b, L, d_inner)
    return (y * w["norm.weight"]) @ w["out_proj.weight"].T


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_matches_a_reference_written_from_the_layout(ngroups: int) -> None:
    torch.manual_seed(0)
    mixer = Mamba2(D_MODEL, d_state=4, headdim=8, ngroups=ngroups, d_conv=3, chunk_size=4)
    with torch.no_grad():  # move D and the norm weight off their all-ones init
        mixer.D.normal_()
        mixer.norm.weight.normal_()
    u = torch.randn(2, 11, D_MODEL)
    expected = reference_mamba2(mixer.state_dict(), u, d_state=4, ngroups=ngroups, headdim=8)
    torch.testing.assert_close(mixer.double()(u.double()), expected)


def test_mamba2_state_dict_round_trips_strictly() -> None:
    torch.manual_seed(0)
    a = Mamba2(D_MODEL, d_state=8, headdim=16)
    torch.manual_seed(1)
    b = Mamba2(D_MODEL, d_state=8, headdim=16)
    u = torch.randn(1, 10, D_MODEL)
    assert not torch.allclose(a(u), b(u))
    b.load_state_dict(st_load(st_save(a.state_dict())), strict=True)  # through safetensors bytes
    torch.testing.assert_close(b(u), a(u), atol=0, rtol=0)


def test_mamba2_fused_kernel_call_follows_its_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for mamba_chunk_scan_combined with its documented contract: raw dt, plus
    # dt_bias and softplus applied inside. The mixer must give the reference path's output.
    calls: list[dict[str, Any]] = []

    def fake_kernel(
        x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
        D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
        initial_states: Tensor | None = None, seq_idx: Tensor | None = None,
        cu_seqlens: Tensor | None = None, dt_softplus: bool = False,
        dt_limit: tuple[float, float] = (0.0, float("inf")), return_final_states: bool = False,
        return_varlen_states: bool = False,
    ) -> Tensor:  # fmt: skip
        calls.append({"z": z, "dt_softplus": dt_softplus, "chunk_size": chunk_size})
        assert x.dim() == 4 and dt.dim() == 3 and B.dim() == 4 and z is None
        if dt_bias is not None:
            dt = dt.float() + dt_bias.float()
        if dt_softplus:
            dt = F.softplus(dt)
        return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_states)[0]

    torch.manual_seed(0)
    mixer = Mamba2(D_MODEL, d_state=8, headdim=16, chunk_size=8)
    u = torch.randn(2, 13, D_MODEL)
    expected = mixer(u, scan="chunked")
    monkeypatch.setattr(mamba2_module, "_fused_scan", fake_kernel)
    monkeypatch.setattr(Mamba2, "_use_fused_kernel", lambda self, u: self.use_kernel)
    torch.testing.assert_close(mixer(u), expected)
    assert len(calls) == 1 and calls[0]["dt_softplus"] is True and calls[0]["chunk_size"] == 8
    mixer.use_kernel = False  # forces the reference path
    mixer(u)
    assert len(calls) == 1


def test_mamba2_without_mamba_ssm_on_cpu_uses_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the fused kernel must not run on CPU tensors")

    monkeypatch.setattr(mamba2_module, "_fused_scan", broken_kernel)
    mixer = Mamba2(D_MODEL, d_state=8, headdim=16)
    assert mixer(torch.randn(1, 5, D_MODEL)).shape == (1, 5, D_MODEL)


def test_mamba2_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2(32, headdim=48)
    with pytest.raises(ValueError, match="multiple of ngroups"):
        Mamba2(32, headdim=16, ngroups=3)
    with pytest.raises(ValueError, match="scan must be"):
        Mamba2(32, d_state=8, headdim=16)(torch.randn(1, 3, 32), scan="fast")


# ---------------------------------------------------------------- every backbone


@pytest.mark.parametrize("kind", BACKBONES)
def test_shape_finite_and_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    net = small_backbone(kind)
    x = torch.randn(2, 21, D_MODEL, requires_grad=True)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets a zero gradient"


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("L", [1, 2, 37])
def test_any_length_works(kind: str, L: int) -> None:
    torch.manual_seed(0)
    y = small_backbone(kind)(torch.randn(3, L, D_MODEL))
    assert y.shape == (3, L, D_MODEL) and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", BACKBONES)
def test_bf16_autocast_on_cpu(kind: str) -> None:
    torch.manual_seed(0)
    net = small_backbone(kind)
    x = torch.randn(2, 19, D_MODEL)
    reference = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # bf16 keeps ~3 significant digits; a normalized output within 0.15 means the same function.
    assert (y.float() - reference).abs().max() < 0.15


@pytest.mark.parametrize("kind", BACKBONES)
def test_deterministic_with_a_fixed_seed(kind: str) -> None:
    x = torch.randn(2, 11, D_MODEL)
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        outs.append(small_backbone(kind)(x))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.manual_seed(99)
    assert not torch.allclose(small_backbone(kind)(x), outs[0])  # the seed matters


@pytest.mark.parametrize("kind", BACKBONES)
def test_stack_layout(kind: str) -> None:
    net = build_backbone(kind, d_model=D_MODEL, num_layers=3, norm="layernorm", **SMALL[kind])
    assert isinstance(net.norm_f, nn.LayerNorm)
    assert len(net.layers) == 3
    net = small_backbone(kind)
    assert isinstance(net.norm_f, nn.RMSNorm)


@pytest.mark.parametrize(
    ("kind", "extra"), [("mamba", {}), ("lstm", {}), ("transformer", {"causal": True})]
)
def test_causal_backbones_do_not_see_the_future(kind: str, extra: dict[str, Any]) -> None:
    torch.manual_seed(0)
    net = small_backbone(kind, **extra)
    x = torch.randn(1, 16, D_MODEL)
    x2 = x.clone()
    x2[:, 9] += 1.0
    y, y2 = net(x), net(x2)
    torch.testing.assert_close(y2[:, :9], y[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(y2[:, 9:], y[:, 9:])


def test_transformer_default_is_bidirectional_with_d_model_over_64_heads() -> None:
    torch.manual_seed(0)
    net = build_backbone("transformer", d_model=128, num_layers=1)
    layer: Any = net.layers[0]
    assert layer.attn.mixer.n_heads == 2
    small: Any = build_backbone("transformer", d_model=32).layers[0]
    assert small.attn.mixer.n_heads == 1
    x = torch.randn(1, 8, 128)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(net(x2)[:, 0], net(x)[:, 0])


def test_gmlp_mixes_tokens_within_the_kernel_only() -> None:
    torch.manual_seed(0)
    net = build_backbone("gmlp", d_model=D_MODEL, num_layers=1, kernel=5)
    x = torch.randn(1, 20, D_MODEL)
    x2 = x.clone()
    x2[:, 10] += 1.0
    changed = (net(x2) - net(x)).abs().amax(dim=-1)[0] > 1e-7
    # "same" padding, radius 2: positions 8..12 see token 10, both sides; nothing else does.
    assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11, 12]


def test_unknown_kind_and_options_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid kinds: mamba, lstm, transformer, gmlp"):
        build_backbone("rnn", d_model=32)
    with pytest.raises(ValueError, match=r"'n_heads'.*'lstm'.*valid options: norm, norm_eps"):
        build_backbone("lstm", d_model=32, n_heads=2)
    with pytest.raises(ValueError, match=r"valid options: .*d_state.*headdim"):
        build_backbone("mamba", d_model=32, dstate=8)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_backbone("gmlp", d_model=32, norm="batchnorm")
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        build_backbone("lstm", d_model=32, num_layers=0)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        build_backbone("transformer", d_model=32, n_heads=3)
    net = small_backbone("lstm")
    with pytest.raises(ValueError, match=r"expects input \(batch, length, 32\)"):
        net(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match="length >= 1"):
        net(torch.randn(1, 0, D_MODEL))


def test_mamba_options_from_json_lists() -> None:
    # Configs come back from config.json with lists where we wrote tuples.
    net = build_backbone("mamba", d_model=D_MODEL, d_state=8, headdim=16, A_init_range=[2, 4])
    layer: Any = net.layers[0]
    A = layer.mixer.A_log.detach().exp()
    assert A.min() >= 2 - 1e-5 and A.max() <= 4 + 1e-5
