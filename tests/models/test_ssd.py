"""The chunked SSD scan against the step-by-step recurrence (and the recurrence by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from models.backbones import ssd
from models.backbones.ssd import ssd_chunked, ssd_recurrent

Inputs = dict[str, torch.Tensor]


def make_inputs(
    b: int,
    L: int,
    h: int,
    p: int,
    g: int,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    dt_scale: float = 0.5,
) -> Inputs:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return {
        "x": randn(b, L, h, p),
        "dt": torch.rand(b, L, h, generator=gen, dtype=dtype) * dt_scale + 1e-3,
        "A": -(torch.rand(h, generator=gen, dtype=dtype) * 4 + 0.1),
        "B": randn(b, L, g, n),
        "C": randn(b, L, g, n),
    }


# (batch, length, heads, headdim, groups, d_state, chunk_size)
SHAPES = [
    (2, 37, 4, 3, 2, 5, 8),  # L not a multiple of chunk_size, 2 groups of 2 heads
    (1, 1, 2, 4, 1, 3, 64),  # a single step, much shorter than a chunk
    (2, 64, 4, 2, 4, 3, 16),  # L a multiple of chunk_size, one group per head
    (3, 50, 6, 2, 3, 4, 7),  # odd chunk size, 3 groups
    (1, 20, 2, 2, 1, 2, 1),  # chunk_size 1: all the work is in the state passing
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-L{}-h{}-p{}-g{}-n{}-q{}".format(*s))
@pytest.mark.parametrize("d_kind", ["none", "per_head", "per_channel"])
@pytest.mark.parametrize("with_init", [False, True], ids=["zero_init", "given_init"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_chunked_matches_recurrent(
    shape: tuple[int, ...], d_kind: str, with_init: bool, dtype: torch.dtype
) -> None:
    b, L, h, p, g, n, q = shape
    inp = make_inputs(b, L, h, p, g, n, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    D = None
    if d_kind == "per_head":
        D = torch.randn(h, generator=gen, dtype=dtype)
    elif d_kind == "per_channel":
        D = torch.randn(h, p, generator=gen, dtype=dtype)
    init = torch.randn(b, h, p, n, generator=gen, dtype=dtype) if with_init else None

    y_c, s_c = ssd_chunked(**inp, chunk_size=q, D=D, initial_states=init)
    y_r, s_r = ssd_recurrent(**inp, D=D, initial_states=init)

    assert y_c.shape == (b, L, h, p) and y_c.dtype == dtype
    assert s_c.shape == (b, h, p, n)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y_c, y_r, atol=tol, rtol=tol)
    torch.testing.assert_close(s_c, s_r, atol=tol, rtol=tol)


def test_recurrence_by_hand() -> None:
    # One head, one channel, one state dim: two steps written out.
    x = torch.tensor([0.7, -1.3], dtype=torch.float64)
    dt = torch.tensor([0.2, 0.9], dtype=torch.float64)
    A = torch.tensor([-1.5], dtype=torch.float64)
    Bv = torch.tensor([0.4, 2.0], dtype=torch.float64)
    Cv = torch.tensor([-0.8, 0.3], dtype=torch.float64)
    D = torch.tensor([0.25], dtype=torch.float64)
    h1 = dt[0] * Bv[0] * x[0]
    h2 = math.exp(dt[1] * A[0]) * h1 + dt[1] * Bv[1] * x[1]
    expected = torch.stack([Cv[0] * h1 + D[0] * x[0], Cv[1] * h2 + D[0] * x[1]])
    args = (x.view(1, 2, 1, 1), dt.view(1, 2, 1), A, Bv.view(1, 2, 1, 1), Cv.view(1, 2, 1, 1))
    for y, state in (ssd_recurrent(*args, D=D), ssd_chunked(*args, chunk_size=1, D=D)):
        torch.testing.assert_close(y.flatten(), expected)
        torch.testing.assert_close(state.flatten(), h2.view(1))


def test_groups_map_to_consecutive_heads() -> None:
    # With g groups of r heads, head i reads group i // r: expanding B and C to one group per
    # head by hand must give the same result.
    b, L, h, p, g, n = 2, 19, 6, 2, 2, 3
    inp = make_inputs(b, L, h, p, g, n, dtype=torch.float64)
    y_grouped, _ = ssd_chunked(**inp, chunk_size=5)
    per_head = dict(
        inp,
        B=inp["B"].repeat_interleave(h // g, dim=2),
        C=inp["C"].repeat_interleave(h // g, dim=2),
    )
    y_per_head, _ = ssd_chunked(**per_head, chunk_size=5)
    torch.testing.assert_close(y_grouped, y_per_head)
    # And the mapping matters: interleaving the groups the other way changes the result.
    wrong = dict(inp, B=inp["B"].repeat(1, 1, h // g, 1), C=inp["C"].repeat(1, 1, h // g, 1))
    assert not torch.allclose(ssd_chunked(**wrong, chunk_size=5)[0], y_grouped)


def test_chunk_size_does_not_change_the_result() -> None:
    inp = make_inputs(2, 45, 4, 3, 1, 4, dtype=torch.float64)
    ys = [ssd_chunked(**inp, chunk_size=q)[0] for q in (1, 4, 16, 45, 64, 100)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0])


def test_split_sequence_continues_from_final_state() -> None:
    # Scanning [first | second] in two calls, passing the state along, equals one call.
    inp = make_inputs(2, 30, 4, 2, 2, 3, dtype=torch.float64)
    first = {k: v[:, :13] if v.dim() > 1 else v for k, v in inp.items()}
    second = {k: v[:, 13:] if v.dim() > 1 else v for k, v in inp.items()}
    y_full, s_full = ssd_chunked(**inp, chunk_size=8)
    y1, s1 = ssd_chunked(**first, chunk_size=8)
    y2, s2 = ssd_chunked(**second, chunk_size=8, initial_states=s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full)
    torch.testing.assert_close(s2, s_full)


def test_gradients_match_recurrent() -> None:
    inp = make_inputs(2, 23, 4, 2, 2, 3, dtype=torch.float64)
    inp["D"] = torch.randn(4, dtype=torch.float64)
    inp["initial_states"] = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    grads = []
    for fn in (lambda **kw: ssd_chunked(**kw, chunk_size=6), ssd_recurrent):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        y, state = fn(**leaves)
        (y.square().sum() + state.sin().sum()).backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for k in inp:
        g_chunked, g_recurrent = grads[0][k], grads[1][k]
        assert g_chunked is not None and torch.isfinite(g_chunked).all(), k
        torch.testing.assert_close(g_chunked, g_recurrent, msg=k)


def test_fast_decay_stays_finite_and_exact() -> None:
    # Each chunk decays hard for 32 steps (dt * A around -800 per step: log-decays reach
    # -25000), then gently (dt = 0.01). Decays between the gentle steps are O(1), but written as
    # exp(cumsum_i - cumsum_j) they come from differences of two numbers near -25000, which
    # float32 holds only to ~2e-3; and factored as exp(cumsum_i) * exp(-cumsum_j) they are
    # 0 * inf = NaN. The segment sums must avoid both.
    L = 178  # ends in a gentle phase, so the final state depends on those decays
    inp = make_inputs(1, L, 2, 2, 1, 3)
    slow_phase = (torch.arange(L) % 64) >= 32
    inp["dt"] = torch.where(slow_phase, 0.01, 50.0).view(1, L, 1).expand(1, L, 2).contiguous()
    inp["A"] = torch.tensor([-16.0, -15.0])
    y, state = ssd_chunked(**inp, chunk_size=64)
    y_ref, s_ref = ssd_recurrent(**{k: v.double() for k, v in inp.items()})
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y.double(), y_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(state.double(), s_ref, atol=2e-5, rtol=2e-5)


def test_bf16_autocast_computes_in_float32() -> None:
    inp = make_inputs(2, 40, 4, 2, 1, 3)
    bf16 = {k: v.bfloat16() for k, v in inp.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = ssd_chunked(**bf16, chunk_size=16)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    # Same inputs (already rounded to bf16), scanned in float32 outside autocast.
    y_ref, s_ref = ssd_recurrent(**{k: v.float() for k, v in bf16.items()})
    torch.testing.assert_close(y.float(), y_ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(state, s_ref, atol=1e-4, rtol=1e-4)


def test_bad_shapes_say_what_to_fix() -> None:
    inp = make_inputs(1, 8, 4, 2, 1, 3)
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_chunked(**dict(inp, dt=inp["dt"][:, :5]), chunk_size=4)
    with pytest.raises(ValueError, match="multiple of ngroups"):
        ssd_chunked(
            **dict(inp, B=inp["B"].expand(1, 8, 3, 3), C=inp["C"].expand(1, 8, 3, 3)), chunk_size=4
        )
    with pytest.raises(ValueError, match="initial_states must have shape"):
        ssd_recurrent(**inp, initial_states=torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked(**inp, chunk_size=0)


def _check_float32_against_float64_recurrent(inp: Inputs, q: int, seed: int) -> None:
    """Both outputs and every input's gradient (of a random linear loss on both outputs), in
    float32, against autograd through the float64 recurrence."""
    b, L, h, p = inp["x"].shape
    n = inp["B"].shape[-1]
    gen = torch.Generator().manual_seed(seed)
    w_y = torch.randn(b, L, h, p, generator=gen, dtype=torch.float64)
    w_s = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    outs, grads = [], []
    for fn, dtype in (
        (lambda **kw: ssd_chunked(**kw, chunk_size=q), torch.float32),
        (ssd_recurrent, torch.float64),
    ):
        leaves = {k: v.to(dtype).clone().requires_grad_() for k, v in inp.items()}
        y, state = fn(**leaves)
        ((y.double() * w_y).sum() + (state.double() * w_s).sum()).backward()
        outs.append((y.double(), state.double()))
        grads.append({k: v.grad for k, v in leaves.items()})
    for got, want in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for k in inp:
        g_chunked, g_recurrent = grads[0][k], grads[1][k]
        assert g_chunked is not None and g_recurrent is not None, k
        torch.testing.assert_close(g_chunked.double(), g_recurrent, atol=1e-4, rtol=1e-4, msg=k)


@pytest.mark.parametrize("heads_first", [False, True], ids=["auto", "heads_first"])
@pytest.mark.parametrize("q", [5, 16, 64])
def test_float32_gradients_match_float64_recurrent(
    q: int, heads_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both forms have a hand-written backward: groups, a padded tail, D per channel, a given
    # initial state, and a loss on both outputs. (These decays factor; a negative span limit
    # sends every head heads-first.)
    if heads_first:
        monkeypatch.setattr(ssd, "FACTORED_SPAN", -1.0)
    b, L, h, p, g, n = 2, 45, 6, 4, 3, 5
    inp = make_inputs(b, L, h, p, g, n, seed=3, dt_scale=1.0)
    gen = torch.Generator().manual_seed(4)
    inp["D"] = torch.randn(h, p, generator=gen)
    inp["initial_states"] = torch.randn(b, h, p, n, generator=gen)
    _check_float32_against_float64_recurrent(inp, q, seed=4)


def test_fast_decay_gradients_stay_finite() -> None:
    L = 178
    inp = make_inputs(1, L, 2, 2, 1, 3)
    slow_phase = (torch.arange(L) % 64) >= 32
    inp["dt"] = torch.where(slow_phase, 0.01, 50.0).view(1, L, 1).expand(1, L, 2).contiguous()
    inp["A"] = torch.tensor([-16.0, -15.0])
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y, state = ssd_chunked(**leaves, chunk_size=64)
    (y.square().sum() + state.sum()).backward()
    ref = {k: v.double().requires_grad_() for k, v in inp.items()}
    y_r, s_r = ssd_recurrent(**ref)
    (y_r.square().sum() + s_r.sum()).backward()
    for k in inp:
        g, g_ref = leaves[k].grad, ref[k].grad
        assert g is not None and torch.isfinite(g).all(), k
        assert g_ref is not None
        torch.testing.assert_close(g.double(), g_ref, atol=2e-4, rtol=2e-4, msg=k)


def test_fast_and_slow_heads_in_one_call() -> None:
    # One head forgets e^-100s within a chunk, the others decay gently, in the same call (with
    # groups, a padded tail, D per channel and an initial state).
    b, L, h, p, g, n = 2, 70, 4, 3, 2, 4
    inp = make_inputs(b, L, h, p, g, n, seed=7, dt_scale=1.0)
    inp["A"] = torch.tensor([-0.3, -60.0, -1.0, -2.5])
    gen = torch.Generator().manual_seed(8)
    inp["D"] = torch.randn(h, p, generator=gen)
    inp["initial_states"] = torch.randn(b, h, p, n, generator=gen)
    _check_float32_against_float64_recurrent(inp, 32, seed=9)


def test_bench_takes_the_inputs_mamba2_hands_its_scan() -> None:
    from models.bench import ssd as bench_ssd

    x, dt, A, B, C, D = bench_ssd._mamba2_inputs(2, 96)
    assert x.shape == (2, 96, 8, 64) and B.shape == C.shape == (2, 96, 1, 32)
    assert x.stride(-1) == 1 and not x.is_contiguous()  # a slice of the conv output's rows
    assert dt.min() > 0 and dt.max() < 1 and (A < 0).all()
    with torch.no_grad():
        y, state = ssd_chunked(x, dt, A, B, C, 64, D=D)
        y_ref, s_ref = ssd_recurrent(
            x.double(), dt.double(), A.double(), B.double(), C.double(), D=D.double()
        )
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.double(), s_ref, atol=1e-5, rtol=1e-4)


def _record_forms(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record which form each call takes, and for how many heads."""
    calls: list[tuple[str, int]] = []
    for name in ("_factored", "_heads_first"):
        original = getattr(ssd, name)

        def spy(*args: object, _name: str = name, _original: object = original) -> object:
            x = args[0]
            assert isinstance(x, torch.Tensor) and callable(_original)
            calls.append((_name, x.shape[2]))
            return _original(*args)

        monkeypatch.setattr(ssd, name, spy)
    return calls


def test_each_head_takes_its_form(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_forms(monkeypatch)
    inp = make_inputs(2, 70, 4, 3, 2, 4, seed=7, dt_scale=1.0)
    ssd_chunked(**inp, chunk_size=32)  # gentle decays: all factored, no selection
    assert calls == [("_factored", 4)]
    calls.clear()
    inp["A"] = torch.tensor([-0.3, -60.0, -1.0, -2.5])  # head 1 forgets e^-900 per chunk
    ssd_chunked(**inp, chunk_size=32)
    # Heads are chosen by their index in the group: 1 of 2 (heads 1 and 3) go heads-first.
    assert calls == [("_factored", 2), ("_heads_first", 2)]


def test_an_overflowing_factored_scan_is_redone_heads_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A chunk spanning 125 (under the limit of 128) with inputs of 1e12: the factored form's
    # products reach e^62 * 1e12 * q, past float32's 3.4e38; the heads-first one stays finite.
    calls = _record_forms(monkeypatch)
    inp = make_inputs(1, 32, 2, 2, 1, 3, seed=2)
    inp["dt"] = torch.ones(1, 32, 2)
    inp["A"] = torch.tensor([-3.9, -3.9])
    inp["x"] = inp["x"] * 1e12
    y, state = ssd_chunked(**inp, chunk_size=32)
    assert [name for name, _ in calls] == ["_factored", "_heads_first"]
    y_ref, s_ref = ssd_recurrent(**{k: v.double() for k, v in inp.items()})
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e12 * 1e-5)
    torch.testing.assert_close(state.double(), s_ref, rtol=1e-5, atol=1e12 * 1e-5)
