"""ParameterTokenizer: layout, round trip precision, serialization and errors.

Tolerances. A token stores z = (x - mean) / std computed in float64 and rounded once to
float32, so |dz| <= 2**-24 |z| and the decoded float64 value is off by at most
2**-24 |x - mean| (mean = the zoo mean, recomputed here from the spec), plus float64 noise
(2**-50 of the magnitudes involved); rounding into the tensor's own dtype then adds at most
half an ulp (eps/2 * |x|, or half the smallest subnormal). Doing the math in float32 instead
breaks this bound whenever |mean| >> |x - mean|. For running_var the log transform multiplies
the float32 error by |log(v / (0.95 m) + 0.05) - mu| (<= 20 for the ranges drawn here) and
exp() turns it into a relative error on v + 0.0475 m: we allow 1e-5 * (v + 0.05 m), about 8x
that bound, plus the smallest subnormal (decoded variances are kept > 0, so 0 can come back
as that).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from models.tokenizer import ParameterTokenizer

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALL_DTYPES = [*FLOAT_DTYPES, torch.int64, torch.bool]
StateDict = dict[str, Tensor]


# ------------------------------------------------------------------------------ helpers
def is_tokenized(name: str, tensor: Tensor) -> bool:
    """The spec's rule, written independently of the tokenizer."""
    return (
        tensor.is_floating_point()
        and tensor.dim() > 0
        and tensor.numel() > 0
        and not name.endswith("num_batches_tracked")
    )


def expected_layout(
    state_dict: Mapping[str, Tensor], token_size: int, granularity: str
) -> tuple[list[list[int]], list[list[bool]]]:
    """(positions, padding mask rows) built token by token, the slow obvious way."""
    positions: list[list[int]] = []
    mask: list[list[bool]] = []
    tensor_index = 0
    for name, tensor in state_dict.items():
        if not is_tokenized(name, tensor):
            continue
        by_channel = granularity == "channel" and tensor.dim() >= 2
        rows = tensor.shape[0] if by_channel else 1
        row_length = tensor.numel() // rows
        token_index = 0
        for _ in range(rows):
            for first in range(0, row_length, token_size):
                real = min(token_size, row_length - first)
                positions.append([tensor_index, token_index])
                mask.append([True] * real + [False] * (token_size - real))
                token_index += 1
        tensor_index += 1
    return positions, mask


def zoo_mean(zoo: Sequence[Mapping[str, Tensor]], name: str) -> float:
    return sum(float(sd[name].double().mean()) for sd in zoo) / len(zoo)


def assert_round_trip(
    original: Mapping[str, Tensor],
    decoded: Mapping[str, Tensor],
    zoo: Sequence[Mapping[str, Tensor]],
) -> None:
    """decoded == original within float32 rounding of the normalized values (see top)."""
    assert list(decoded) == list(original)
    for name, x in original.items():
        y = decoded[name]
        assert y.dtype == x.dtype and y.shape == x.shape and y.device.type == "cpu", name
        if not is_tokenized(name, x):
            assert torch.equal(y, zoo[0][name]), f"{name}: passthrough comes from zoo[0]"
            continue
        x64, y64 = x.double(), y.double()
        assert torch.isfinite(y64).all(), name
        finfo = torch.finfo(x.dtype)
        rounding = 0.51 * finfo.eps * (x64.abs() + finfo.tiny)
        is_variance = name.endswith("running_var") and all((sd[name] >= 0).all() for sd in zoo)
        if is_variance:
            m = zoo_mean(zoo, name)
            scale = m if m > 0 else 1.0
            floor = finfo.tiny * finfo.eps  # 0 comes back as the smallest positive value
            tol = 1e-5 * (x64.abs() + 0.05 * scale) + rounding + floor
            assert (y64 > 0).all(), f"{name}: decoded variances must stay positive"
        else:
            mean = zoo_mean(zoo, name)
            noise = 2.0**-50 * (x64.abs() + abs(mean) + 1e-300)
            tol = 1.001 * 2.0**-24 * (x64 - mean).abs() + noise + rounding
        error = (y64 - x64).abs()
        worst = int(torch.argmax(error - tol))
        assert (error <= tol).all(), (
            f"{name} ({x.dtype}): error {error.flatten()[worst]:.3g} > tol "
            f"{tol.flatten()[worst]:.3g} at value {x64.flatten()[worst]:.6g}"
        )


def assert_same_tokens(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def json_round_trip(tokenizer: ParameterTokenizer) -> ParameterTokenizer:
    text = json.dumps(tokenizer.to_dict(), allow_nan=False)  # raises on non-finite floats
    return ParameterTokenizer.from_dict(json.loads(text))


# ------------------------------------------------------------------- random state dicts
@st.composite
def zoos(draw: st.DrawFn) -> tuple[list[StateDict], StateDict]:
    """A random architecture: a zoo of 1-3 checkpoints plus one outsider state dict."""
    specs = []
    for i in range(draw(st.integers(1, 6))):
        dtype = draw(st.sampled_from(ALL_DTYPES))
        shape = draw(
            st.one_of(
                st.just(()),
                st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
                st.integers(1, 700).map(lambda n: (n,)),
            )
        )
        suffix = draw(st.sampled_from(["weight", "weight", "running_var", "num_batches_tracked"]))
        offset = draw(st.sampled_from([0.0, 0.5, -3.0, 200.0]))
        scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0]))
        specs.append((f"layer{i}.{suffix}", shape, dtype, offset, scale))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)

    def make(spread: float) -> StateDict:
        state_dict = {}
        for name, shape, dtype, offset, scale in specs:
            if dtype == torch.bool:
                values = torch.randint(0, 2, shape, generator=generator).bool()
            elif dtype == torch.int64:
                values = torch.randint(-1000, 1000, shape, generator=generator)
            elif name.endswith("running_var"):  # variances: >= 0, right-skewed
                noise = torch.randn(shape, generator=generator, dtype=torch.float64)
                values = scale * spread * torch.exp(2 * noise)
            else:
                noise = torch.randn(shape, generator=generator, dtype=torch.float64)
                values = offset + scale * spread * noise
            if values.is_floating_point():  # stay finite in float16
                limit = torch.finfo(dtype).max
                values = values.clamp(-limit, limit).to(dtype)
            state_dict[name] = values
        return state_dict

    zoo = [make(1.0) for _ in range(draw(st.integers(1, 3)))]
    return zoo, make(draw(st.sampled_from([1.0, 0.1, 5.0])))


token_sizes = st.one_of(st.just(1), st.integers(1, 64), st.just(4096))
granularities = st.sampled_from(["tensor", "channel"])


@settings(max_examples=60, deadline=None)
@given(zoo_and_outsider=zoos(), token_size=token_sizes, granularity=granularities)
def test_round_trip_layout_and_serialization(
    zoo_and_outsider: tuple[list[StateDict], StateDict], token_size: int, granularity: str
) -> None:
    zoo, outsider = zoo_and_outsider
    tokenizer = ParameterTokenizer.fit(zoo, token_size=token_size, granularity=granularity)  # type: ignore[arg-type]
    positions, mask_rows = expected_layout(zoo[0], token_size, granularity)
    mask = torch.tensor(mask_rows, dtype=torch.bool).reshape(len(mask_rows), token_size)

    assert tokenizer.token_size == token_size
    assert tokenizer.num_tokens == len(positions)
    tokenized = [t for n, t in zoo[0].items() if is_tokenized(n, t)]
    assert tokenizer.num_tensors == len(tokenized)
    assert tokenizer.num_parameters == sum(t.numel() for t in tokenized)
    assert tokenizer.positions().dtype == torch.long
    assert tokenizer.positions().reshape(-1, 2).tolist() == positions
    assert torch.equal(tokenizer.padding_mask(), mask)

    restored = json_round_trip(tokenizer)
    for state_dict in [zoo[0], zoo[-1], outsider]:
        tokens = tokenizer.encode(state_dict)
        assert tokens.dtype == torch.float32 and tokens.shape == (len(positions), token_size)
        assert torch.equal(torch.isnan(tokens), ~mask), "NaN exactly at padding"
        decoded = tokenizer.decode(tokens)
        assert_round_trip(state_dict, decoded, zoo)
        assert torch.equal(tokenizer.normalized_vector(state_dict), tokens[mask])
        assert_same_tokens(restored.encode(state_dict), tokens)
        for key, value in restored.decode(tokens).items():
            assert torch.equal(value, decoded[key]), key


@settings(max_examples=25, deadline=None)
@given(zoo_and_outsider=zoos(), token_size=token_sizes, granularity=granularities)
def test_decode_ignores_padding_and_token_dtype(
    zoo_and_outsider: tuple[list[StateDict], StateDict], token_size: int, granularity: str
) -> None:
    zoo, outsider = zoo_and_outsider
    tokenizer = ParameterTokenizer.fit(zoo, token_size=token_size, granularity=granularity)  # type: ignore[arg-type]
    tokens = tokenizer.encode(outsider)
    reference = tokenizer.decode(tokens)
    # Generated tokens hold numbers, not NaN, at padding positions.
    filled = tokens.clone()
    filled[~tokenizer.padding_mask()] = 1e30
    for candidate in [filled, filled.double()]:
        decoded = tokenizer.decode(candidate)
        for key, value in reference.items():
            assert torch.equal(decoded[key], value), key


# ------------------------------------------------------------------------- real modules
class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def conv_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = ConvBNNet()
    net.train()
    with torch.no_grad():  # a few batches so running stats and num_batches_tracked move
        for _ in range(3):
            net(torch.randn(16, 3, 8, 8) * (1 + seed % 3))
    return net.eval()


def seeded(factory: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return factory().eval()

    return build


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "conv_bn_linear": conv_bn_net,
    "transformer_layer": seeded(
        lambda: nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    ),
    "lstm": seeded(lambda: nn.LSTM(6, 8, num_layers=2, batch_first=True)),
    "gru": seeded(lambda: nn.GRU(6, 8, batch_first=True, bidirectional=True)),
    "embedding": seeded(lambda: nn.Embedding(50, 12)),
    "multihead_attention": seeded(lambda: nn.MultiheadAttention(16, 4, batch_first=True)),
}
INPUTS: dict[str, Callable[[], tuple[Tensor, ...]]] = {
    "conv_bn_linear": lambda: (torch.randn(4, 3, 8, 8),),
    "transformer_layer": lambda: (torch.randn(2, 5, 16),),
    "lstm": lambda: (torch.randn(2, 5, 6),),
    "gru": lambda: (torch.randn(2, 5, 6),),
    "embedding": lambda: (torch.randint(0, 50, (3, 7)),),
    "multihead_attention": lambda: (torch.randn(2, 5, 16),) * 3,
}


def first_output(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_real_modules_round_trip(arch: str, granularity: str) -> None:
    build = BUILDERS[arch]
    zoo = [build(seed).state_dict() for seed in range(3)]
    tokenizer = ParameterTokenizer.fit(zoo, token_size=32, granularity=granularity)  # type: ignore[arg-type]
    inputs = INPUTS[arch]()
    for source_seed in [0, 7]:  # a zoo member and a model the tokenizer never saw
        source = build(source_seed)
        decoded = tokenizer.decode(tokenizer.encode(source.state_dict()))
        assert_round_trip(source.state_dict(), decoded, zoo)
        target = build(123)
        target.load_state_dict(decoded, strict=True)
        with torch.no_grad():
            expected, actual = first_output(source(*inputs)), first_output(target(*inputs))
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_running_var_round_trip_is_positive_and_close() -> None:
    zoo = [conv_bn_net(seed).state_dict() for seed in range(4)]
    variances = torch.stack([sd["bn.running_var"] for sd in zoo])
    assert variances.std() > 0.01, "running stats should differ between zoo members"
    tokenizer = ParameterTokenizer.fit(zoo, token_size=4)
    for state_dict in [*zoo, conv_bn_net(11).state_dict()]:
        decoded = tokenizer.decode(tokenizer.encode(state_dict))["bn.running_var"]
        assert (decoded > 0).all()
        torch.testing.assert_close(decoded, state_dict["bn.running_var"], rtol=1e-5, atol=0)
    # Anything a generator emits decodes to strictly positive, finite variances.
    noise = torch.randn(tokenizer.num_tokens, tokenizer.token_size, dtype=torch.float64) * 50
    decoded = tokenizer.decode(noise)["bn.running_var"]
    assert torch.isfinite(decoded).all() and (decoded > 0).all()


def test_tokens_follow_the_normalization_spec() -> None:
    """Per-checkpoint mean and population std, averaged over the zoo; log for running_var."""
    zoo = [conv_bn_net(seed).state_dict() for seed in range(3)]
    tokenizer = ParameterTokenizer.fit(zoo, token_size=8)
    values = tokenizer.normalized_vector(zoo[1])
    names = [n for n, t in zoo[0].items() if is_tokenized(n, t)]
    sizes = [zoo[0][n].numel() for n in names]
    per_tensor = dict(zip(names, values.split(sizes), strict=True))

    def transformed(sd: Mapping[str, Tensor], name: str) -> Tensor:
        x = sd[name].double()
        if name.endswith("running_var"):
            x = torch.log(x / (0.95 * zoo_mean(zoo, name)) + 0.05)
        return x

    for name in ["conv.weight", "fc.bias", "bn.running_mean", "bn.running_var"]:
        mean = sum(float(transformed(sd, name).mean()) for sd in zoo) / len(zoo)
        std = sum(float(transformed(sd, name).std(correction=0)) for sd in zoo) / len(zoo)
        expected = ((transformed(zoo[1], name) - mean) / std).flatten().float()
        torch.testing.assert_close(per_tensor[name], expected, rtol=1e-6, atol=1e-6)
    # Fresh BatchNorm weights are all ones in every checkpoint: std 0 must not divide.
    assert torch.equal(per_tensor["bn.weight"], torch.zeros(8))


def test_negative_running_var_is_left_untransformed() -> None:
    zoo = [{"x.running_var": torch.randn(10) - 0.5 * i} for i in range(3)]
    tokenizer = ParameterTokenizer.fit(zoo, token_size=3)
    for state_dict in zoo:
        assert_round_trip(state_dict, tokenizer.decode(tokenizer.encode(state_dict)), zoo)


def test_only_passthrough_tensors() -> None:
    zoo = [{"step": torch.tensor(3), "mask": torch.ones(4, dtype=torch.bool)}]
    tokenizer = ParameterTokenizer.fit(zoo, token_size=5)
    assert tokenizer.num_tokens == 0 and tokenizer.num_parameters == 0
    tokens = tokenizer.encode(zoo[0])
    assert tokens.shape == (0, 5)
    assert_round_trip(zoo[0], tokenizer.decode(tokens), zoo)


def test_non_finite_passthrough_scalars_survive_json() -> None:
    zoo = [{"w": torch.randn(5), "a": torch.tensor(float("nan")), "b": torch.tensor(-math.inf)}]
    restored = json_round_trip(ParameterTokenizer.fit(zoo))
    decoded = restored.decode(restored.encode(zoo[0]))
    assert torch.isnan(decoded["a"]) and decoded["b"] == -math.inf


# ------------------------------------------------------------------------------ errors
def small_zoo() -> list[StateDict]:
    return [{"w": torch.randn(4, 3), "b": torch.randn(4)} for _ in range(2)]


def test_fit_errors() -> None:
    with pytest.raises(ValueError, match="empty zoo"):
        ParameterTokenizer.fit([])
    with pytest.raises(ValueError, match=r"state dict 1 has different keys.*missing \['b'\]"):
        ParameterTokenizer.fit([small_zoo()[0], {"w": torch.randn(4, 3)}])
    with pytest.raises(ValueError, match=r"'w' has shape \(4, 2\) in state dict 1"):
        ParameterTokenizer.fit([small_zoo()[0], {"w": torch.randn(4, 2), "b": torch.randn(4)}])
    with pytest.raises(ValueError, match=r"'b' has dtype torch\.float64 in state dict 1"):
        ParameterTokenizer.fit(
            [small_zoo()[0], {"w": torch.randn(4, 3), "b": torch.zeros(4).double()}]
        )
    for bad in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match="token_size must be an integer >= 1"):
            ParameterTokenizer.fit(small_zoo(), token_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="granularity must be 'tensor' or 'channel'"):
        ParameterTokenizer.fit(small_zoo(), granularity="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'w' contains NaN or inf"):
        ParameterTokenizer.fit([{"w": torch.tensor([1.0, float("nan")])}])
    with pytest.raises(TypeError, match=r"'w' is not a torch\.Tensor"):
        ParameterTokenizer.fit([{"w": [1.0, 2.0]}])  # type: ignore[dict-item]


def test_encode_errors() -> None:
    tokenizer = ParameterTokenizer.fit(small_zoo(), token_size=5)
    with pytest.raises(ValueError, match=r"missing keys \['b'\]"):
        tokenizer.encode({"w": torch.randn(4, 3)})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        tokenizer.encode({**small_zoo()[0], "extra": torch.zeros(1)})
    with pytest.raises(
        ValueError, match=r"'w' has shape \(3, 4\), the fitted layout expects \(4, 3\)"
    ):
        tokenizer.encode({"w": torch.randn(3, 4), "b": torch.randn(4)})
    with pytest.raises(ValueError, match=r"'b' is torch\.int64, the fitted layout expects a float"):
        tokenizer.encode({"w": torch.randn(4, 3), "b": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="'b' contains NaN or inf"):
        tokenizer.encode({"w": torch.randn(4, 3), "b": torch.full((4,), math.inf)})
    variances = ParameterTokenizer.fit([{"bn.running_var": torch.rand(6)}])
    with pytest.raises(ValueError, match="negative values"):
        variances.encode({"bn.running_var": -torch.rand(6)})


def test_decode_and_from_dict_errors() -> None:
    tokenizer = ParameterTokenizer.fit(small_zoo(), token_size=5)
    tokens = tokenizer.encode(small_zoo()[0])
    for bad in [tokens[:-1], tokens[None], tokens[:, :4]]:
        with pytest.raises(ValueError, match=r"decode\(\) expects tokens of shape .* = \(4, 5\)"):
            tokenizer.decode(bad)
    with pytest.raises(ValueError, match="floating-point tokens"):
        tokenizer.decode(tokens.nan_to_num().long())
    with pytest.raises(ValueError, match="not a tokenizer layout"):
        ParameterTokenizer.from_dict({"format": "something-else", "version": 1})
    data = tokenizer.to_dict()
    data["tensors"][0]["std"] = 0.0
    with pytest.raises(ValueError, match="malformed tokenized entry for 'w'"):
        ParameterTokenizer.from_dict(data)
