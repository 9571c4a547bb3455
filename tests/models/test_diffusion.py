"""Tests for the noise schedule, `extract`, the conv U-Net denoiser and the training loss.

Sampler tests live in test_diffusion_samplers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from models.diffusion import ConvUNetDenoiser, NoiseSchedule, diffusion_loss, extract
from models.diffusion.denoiser import timestep_embedding


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- schedule


def test_linear_schedule_is_float64_tables_rounded_once() -> None:
    s = NoiseSchedule(1000, 1e-4, 0.02, "linear")
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    expected = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "sqrt_recip_alphas_cumprod": 1.0 / np.sqrt(ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
        "posterior_variance": betas * (1.0 - ac_prev) / (1.0 - ac),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
    }
    for name, ref in expected.items():
        buf = getattr(s, name)
        assert buf.dtype == torch.float32, name
        assert buf.shape == (1000,), name
        np.testing.assert_allclose(buf.numpy(), ref, rtol=2e-6, atol=0, err_msg=name)
    # Bit-exact: the float64 product rounded once. A float32 cumprod drifts away from it,
    # so this fails if the tables are built in float32.
    assert torch.equal(s.alphas_cumprod, torch.from_numpy(ac).float())
    f32 = torch.cumprod(1.0 - torch.from_numpy(betas).float(), dim=0)
    assert not torch.equal(f32, s.alphas_cumprod)
    # spot values by hand: beta_0, beta_T-1, a_0 = 1 - beta_0, a_1 = (1 - b0)(1 - b1)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    b1 = 1e-4 + (0.02 - 1e-4) / 999
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - b1), rel=1e-7)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_cosine_schedule_matches_closed_form() -> None:
    t_max, offset = 200, 0.008
    s = NoiseSchedule(t_max, kind="cosine")

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / t_max + offset) / (1 + offset) * math.pi / 2) ** 2

    ts = np.arange(1, t_max + 1, dtype=np.float64)
    ac_ref = f(ts) / f(np.zeros(1))
    # the last betas are capped at 0.999, which changes only the tail
    np.testing.assert_allclose(s.alphas_cumprod.numpy()[:-5], ac_ref[:-5], rtol=1e-5)
    assert s.betas.max().item() <= 0.999 + 1e-7


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_monotone_and_consistent(kind: str) -> None:
    s = NoiseSchedule(100, kind=kind)  # type: ignore[arg-type]
    assert torch.all(s.betas > 0) and torch.all(s.betas < 1)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert torch.all(s.sqrt_one_minus_alphas_cumprod[1:] > s.sqrt_one_minus_alphas_cumprod[:-1])
    if kind == "linear":
        assert torch.all(s.betas[1:] > s.betas[:-1])
    total = s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2
    torch.testing.assert_close(total, torch.ones(100), atol=1e-6, rtol=0)
    assert torch.all(s.posterior_variance[1:] > 0)
    assert torch.all(s.posterior_variance <= s.betas + 1e-9)


def test_schedule_buffers_not_saved_and_config_round_trips() -> None:
    s = NoiseSchedule(64, 2e-4, 0.03, "linear")
    assert s.state_dict() == {}  # rebuilt from config, never stored in checkpoints
    rebuilt = NoiseSchedule(**s.config)
    assert rebuilt.config == s.config
    assert torch.equal(rebuilt.alphas_cumprod, s.alphas_cumprod)
    assert s.to(torch.float64).alphas_cumprod.dtype == torch.float64  # buffers follow .to()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_timesteps": 1}, "at least 2"),
        ({"kind": "quadratic"}, "unknown schedule kind"),
        ({"beta_start": 0.0}, "0 < beta_start"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "beta_start <= beta_end"),
        ({"beta_end": 1.0}, "beta_end < 1"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)  # type: ignore[arg-type]


def test_q_sample_matches_formula_per_sample() -> None:
    s = NoiseSchedule(100)
    x0, noise = torch.randn(3, 5, generator=_gen(0)), torch.randn(3, 5, generator=_gen(1))
    t = torch.tensor([0, 50, 99])
    out = s.q_sample(x0, t, noise)
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 100))
    for row, step in enumerate(t.tolist()):
        ref = math.sqrt(ac[step]) * x0[row] + math.sqrt(1 - ac[step]) * noise[row]
        torch.testing.assert_close(out[row], ref, atol=1e-6, rtol=1e-6)


def test_q_sample_statistics() -> None:
    s = NoiseSchedule(100, 1e-4, 0.05)
    n, value = 20_000, 0.7
    for step in (5, 60, 99):
        x0 = torch.full((n, 4), value)
        noise = torch.randn(n, 4, generator=_gen(step))
        xt = s.q_sample(x0, torch.full((n,), step), noise)
        ac = s.alphas_cumprod[step].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ac) * value, abs=0.02)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - ac), rel=0.03)


def test_q_sample_rejects_mismatched_noise() -> None:
    s = NoiseSchedule(10)
    with pytest.raises(ValueError, match="randn_like"):
        s.q_sample(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))


# --------------------------------------------------------------------------- extract


@pytest.mark.parametrize("shape", [(4,), (4, 7), (4, 2, 3), (4, 1, 5, 6)])
def test_extract_shapes_and_values(shape: tuple[int, ...]) -> None:
    table = torch.arange(10, dtype=torch.float32) * 10
    t = torch.tensor([0, 3, 9, 3])
    out = extract(table, t, shape)
    assert out.shape == (4,) + (1,) * (len(shape) - 1)
    assert out.reshape(-1).tolist() == [0.0, 30.0, 90.0, 30.0]
    assert (out * torch.ones(shape)).shape == shape


def test_extract_broadcasts_a_single_timestep_and_validates() -> None:
    table = torch.arange(5, dtype=torch.float32)
    assert extract(table, torch.tensor([2]), (6, 3)).shape == (1, 1)
    with pytest.raises(ValueError, match="1-D"):
        extract(table, torch.tensor([[1, 2]]), (2, 3))
    with pytest.raises(ValueError, match="3 timesteps but the batch has 2"):
        extract(table, torch.tensor([0, 1, 2]), (2, 3))


# --------------------------------------------------------------------------- denoiser


@pytest.mark.parametrize(
    ("token_size", "channels", "kernel", "norm"),
    [
        (1, (1, 4, 1), 7, "batch"),
        (5, (1, 8, 16, 8, 1), 3, "batch"),
        (33, (1, 4, 8, 16, 8, 4, 1), 7, "group"),
        (64, (1, 32, 64, 128, 64, 32, 1), 7, "batch"),
        (10, (1, 6, 12, 6, 1), 4, "group"),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_denoiser_shapes_and_finite(
    token_size: int, channels: tuple[int, ...], kernel: int, norm: str
) -> None:
    torch.manual_seed(0)
    model = ConvUNetDenoiser(token_size, 6, channels, kernel, time_dim=16, norm=norm)  # type: ignore[arg-type]
    n = 12
    x, cond = torch.randn(n, token_size), torch.randn(n, 6)
    t = torch.randint(0, 1000, (n,))
    out = model(x, t, cond)
    assert out.shape == (n, token_size)
    assert torch.isfinite(out).all()
    # "near zero at init": well below the unit-variance target noise
    assert out.std().item() < 0.5


def test_denoiser_handles_thousands_of_tokens_in_eval() -> None:
    model = ConvUNetDenoiser(16, 8, (1, 4, 8, 4, 1), time_dim=8).eval()
    n = 3000
    with torch.no_grad():
        out = model(torch.randn(n, 16), torch.randint(0, 1000, (n,)), torch.randn(n, 8))
    assert out.shape == (n, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("cond_projection", ["per_layer", "shared"])
def test_denoiser_gradients_reach_every_parameter(cond_projection: str) -> None:
    torch.manual_seed(0)
    model = ConvUNetDenoiser(
        12,
        5,
        (1, 4, 8, 4, 1),
        time_dim=8,
        cond_projection=cond_projection,  # type: ignore[arg-type]
    )
    out = model(torch.randn(8, 12), torch.randint(0, 100, (8,)), torch.randn(8, 5))
    (out - torch.randn(8, 12)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum().item() > 0, name


def test_shared_cond_projection_saves_parameters() -> None:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    per_layer = ConvUNetDenoiser(32, 32, (1, 4, 8, 4, 1), time_dim=8)
    shared = ConvUNetDenoiser(32, 32, (1, 4, 8, 4, 1), time_dim=8, cond_projection="shared")
    assert count(per_layer) - count(shared) == 3 * (32 * 32 + 32)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_denoiser_eval_output_independent_of_batch_mates(norm: str) -> None:
    torch.manual_seed(0)
    model = ConvUNetDenoiser(16, 4, (1, 8, 16, 8, 1), time_dim=8, norm=norm)  # type: ignore[arg-type]
    # a few training-mode passes give BatchNorm non-trivial running statistics
    for _ in range(3):
        model(3 * torch.randn(32, 16) + 1, torch.randint(0, 100, (32,)), torch.randn(32, 4))
    x, t, cond = torch.randn(4, 16), torch.randint(0, 100, (4,)), torch.randn(4, 4)
    others = (5 * torch.randn(60, 16) - 2, torch.randint(0, 100, (60,)), torch.randn(60, 4))

    def run_alone_and_mixed() -> tuple[Tensor, Tensor]:
        alone = model(x, t, cond)
        mixed = model(*(torch.cat([o, a]) for o, a in zip(others, (x, t, cond), strict=True)))
        return alone, mixed[60:]

    model.eval()
    with torch.no_grad():
        alone, mixed = run_alone_and_mixed()
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=1e-5)
    if norm == "batch":
        # the property is eval-mode only: training-mode BatchNorm mixes the batch
        model.train()
        with torch.no_grad():
            alone, mixed = run_alone_and_mixed()
        assert not torch.allclose(alone, mixed, atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": (1, 8, 8, 1)}, "odd length"),
        ({"channels": (1,)}, "odd length"),
        ({"channels": (1, 8, 16, 4, 1)}, "symmetric"),
        ({"channels": (2, 8, 2)}, "start and end with 1"),
        ({"channels": (1, 0, 1)}, "positive ints"),
        ({"token_size": 0}, "token_size"),
        ({"norm": "layer"}, "norm"),
        ({"time_dim": 1}, "time_dim"),
    ],
)
def test_denoiser_rejects_bad_config(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"token_size": 8, "cond_dim": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        ConvUNetDenoiser(**args)  # type: ignore[arg-type]


def test_denoiser_rejects_bad_inputs() -> None:
    model = ConvUNetDenoiser(8, 4, (1, 4, 1), time_dim=8)
    x, t, cond = torch.randn(3, 8), torch.zeros(3, dtype=torch.long), torch.randn(3, 4)
    with pytest.raises(ValueError, match="token_size=8"):
        model(torch.randn(3, 7), t, cond)
    with pytest.raises(ValueError, match="one timestep per token"):
        model(x, t[:2], cond)
    with pytest.raises(ValueError, match="cond_dim=4"):
        model(x, t, torch.randn(3, 5))


def test_timestep_embedding() -> None:
    t = torch.tensor([0, 1, 500, 999])
    emb = timestep_embedding(t, 9)
    assert emb.shape == (4, 9)
    assert torch.equal(emb[:, -1], torch.zeros(4))  # odd dim: zero pad
    assert torch.equal(emb[0, :4], torch.ones(4))  # cos(0)
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min().item() > 0.1  # distinct steps


# --------------------------------------------------------------------------- loss


class _Recorder(torch.nn.Module):
    """A denoiser that records its inputs and returns a fixed prediction."""

    def __init__(self, pred: Tensor) -> None:
        super().__init__()
        self.pred = pred
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        self.calls.append((x.clone(), t.clone()))
        return self.pred


def _padded_tokens() -> Tensor:
    x0 = torch.randn(6, 10, generator=_gen(3))
    x0[1, 7:] = float("nan")
    x0[4, 2:] = float("nan")
    x0[5, :] = float("nan")
    return x0


def test_loss_excludes_nan_positions() -> None:
    s = NoiseSchedule(50)
    x0 = _padded_tokens()
    pred = torch.randn(6, 10, generator=_gen(4))
    rec = _Recorder(pred)
    loss = diffusion_loss(rec, s, x0, torch.zeros(6, 2), generator=_gen(0))
    ((x_t, t),) = rec.calls
    # Recover the noise from x_t with float64 formulas and NaN read as 0 ...
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 50))[t.numpy()][:, None]
    x0_zero = np.nan_to_num(x0.numpy().astype(np.float64), nan=0.0)
    noise = (x_t.numpy() - np.sqrt(ac) * x0_zero) / np.sqrt(1.0 - ac)
    # ... and mask the padding by hand.
    real = ~np.isnan(x0.numpy())
    expected = ((pred.numpy() - noise) ** 2)[real].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(loss.item()) and loss.ndim == 0
    # NaN enters the network as 0: same draws with zeros in place of NaN give the same input
    rec_zero = _Recorder(pred)
    loss_zero = diffusion_loss(
        rec_zero, s, torch.nan_to_num(x0, nan=0.0), torch.zeros(6, 2), generator=_gen(0)
    )
    assert torch.equal(rec_zero.calls[0][0], x_t)
    # ... but there the padding counts, and pred is wrong there, so the loss differs
    assert loss_zero.item() != pytest.approx(loss.item(), rel=1e-3)


def test_loss_gradient_finite_with_padding_and_zero_when_all_padding() -> None:
    s = NoiseSchedule(50)
    model = ConvUNetDenoiser(10, 2, (1, 4, 1), time_dim=8)
    loss = diffusion_loss(model, s, _padded_tokens(), torch.randn(6, 2), generator=_gen(0))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    empty = torch.full((3, 10), float("nan"))
    assert diffusion_loss(model, s, empty, torch.randn(3, 2), generator=_gen(0)).item() == 0.0


def test_loss_is_deterministic_given_generator() -> None:
    s = NoiseSchedule(50)
    model = ConvUNetDenoiser(10, 2, (1, 4, 1), time_dim=8).eval()
    x0, cond = _padded_tokens(), torch.randn(6, 2)
    a = diffusion_loss(model, s, x0, cond, generator=_gen(7))
    b = diffusion_loss(model, s, x0, cond, generator=_gen(7))
    c = diffusion_loss(model, s, x0, cond, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_decreases_when_training_a_tiny_denoiser() -> None:
    torch.manual_seed(0)
    s = NoiseSchedule(50, 1e-4, 0.2)
    n, size = 64, 8
    cond = torch.randn(n, 3, generator=_gen(1))
    # tokens that are a smooth function of their prototype, so there is something to learn
    grid = torch.linspace(0, 1, size)
    x0 = torch.sin(3 * grid[None, :] * cond[:, :1] + cond[:, 1:2])
    x0[:8, 5:] = float("nan")
    model = ConvUNetDenoiser(size, 3, (1, 8, 16, 8, 1), kernel_size=3, time_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss() -> float:
        with torch.no_grad():
            losses = [diffusion_loss(model, s, x0, cond, generator=_gen(k)) for k in range(8)]
        return float(torch.stack(losses).mean())

    before = eval_loss()
    for step in range(40):
        opt.zero_grad()
        diffusion_loss(model, s, x0, cond, generator=_gen(100 + step)).backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after)
    assert after < 0.6 * before, (before, after)
