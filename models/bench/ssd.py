"""Time the chunked SSD scan (``ssd_chunked``), optionally against another version of it.

    python -m models.bench.ssd [--against OLD_SSD.py] [--rounds 5]

Shapes: the tiny preset's mixer (8 heads of 64 channels, one group, state 32, chunk 64) on a
training piece (batch 8, 512 steps: forward + backward, and forward alone) and on a whole
long sequence as sampling runs it (batch 1, 16,384 steps, forward). Two kinds of input:
"fast" draws dt = softplus(N(0, 1)) and A in [-16, -1] (every chunk of every head forgets
e^-400: a stress case); "mamba2" takes what a tiny-preset ``Mamba2`` layer at init hands its
scan for unit-normal layer inputs (dt from its log-uniform dt_bias in [0.001, 0.1]; x, B and C
slices of its convolution's output, as the layer passes them). One thread, freed memory kept (``models.heap``).
With ``--against``, the other file's ``ssd_chunked`` runs interleaved with this one on the same
inputs, round by round, so a busy machine slows both alike; the median of each is printed with
the ratio. To compare with an earlier commit:
``git show COMMIT:models/backbones/ssd.py > /tmp/ssd_old.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from models.backbones import mamba2, ssd
from models.heap import keep_freed_memory

Inputs = tuple[torch.Tensor, ...]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("ssd_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(b: int, L: int, h: int = 8, p: int = 64, n: int = 32) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, L, h, p, generator=gen)  # (b, L, h, p)
    dt = F.softplus(torch.randn(b, L, h, generator=gen))  # (b, L, h)
    A = -(torch.rand(h, generator=gen) * 15 + 1)  # (h,)
    B = torch.randn(b, L, 1, n, generator=gen)  # (b, L, g, n)
    C = torch.randn(b, L, 1, n, generator=gen)
    D = torch.ones(h)  # (h,)
    return tuple(t.requires_grad_() for t in (x, dt, A, B, C, D))


def _mamba2_inputs(b: int, L: int) -> Inputs:
    """The scan's inputs as a tiny-preset Mamba2 layer at init produces them."""
    captured: dict[str, torch.Tensor] = {}
    original = mamba2.ssd_chunked

    def capture(
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        chunk_size: int,
        D: torch.Tensor | None = None,
        initial_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert D is not None  # Mamba2 always has its skip
        captured.update(x=x, dt=dt, A=A, B=B, C=C, D=D)
        return original(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_states)

    torch.manual_seed(0)
    layer = mamba2.Mamba2(256, d_state=32, chunk_size=64)
    mamba2.ssd_chunked = capture
    try:
        with torch.no_grad():
            layer(torch.randn(b, L, 256), scan="chunked")
    finally:
        mamba2.ssd_chunked = original
    # detach() keeps each tensor's layout (x, B and C are slices of the conv output's rows).
    names = ("x", "dt", "A", "B", "C", "D")
    return tuple(captured[k].detach().requires_grad_() for k in names)


def _call(module: ModuleType, inputs: Inputs, backward: bool) -> Callable[[], None]:
    x, dt, A, B, C, D = inputs

    def run() -> None:
        if backward:
            y, state = module.ssd_chunked(x, dt, A, B, C, 64, D=D)
            (y.sum() + state.sum()).backward()
        else:
            with torch.no_grad():
                module.ssd_chunked(x, dt, A, B, C, 64, D=D)

    return run


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m models.bench.ssd``."""
    parser = argparse.ArgumentParser(
        prog="python -m models.bench.ssd", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--against", type=Path, help="another ssd.py to time beside this one")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    keep_freed_memory()
    versions = {"this": ssd}
    if args.against:
        versions["other"] = _load(args.against)
    training, sampling = _inputs(8, 512), _inputs(1, 16_384)
    init_training, init_sampling = _mamba2_inputs(8, 512), _mamba2_inputs(1, 16_384)
    cases = [
        ("fast b8 L512 fwd+bwd", training, True),
        ("fast b8 L512 forward", training, False),
        ("fast b1 L16384 forward", sampling, False),
        ("mamba2 b8 L512 fwd+bwd", init_training, True),
        ("mamba2 b8 L512 forward", init_training, False),
        ("mamba2 b1 L16384 forward", init_sampling, False),
    ]
    for name, inputs, backward in cases:
        times: dict[str, list[float]] = {tag: [] for tag in versions}
        for module in versions.values():
            _call(module, inputs, backward)()  # warm-up
        for _ in range(args.rounds):
            for tag, module in versions.items():
                times[tag].append(_seconds(_call(module, inputs, backward)))
        medians = {tag: statistics.median(values) * 1e3 for tag, values in times.items()}
        line = f"{name:26s} this {medians['this']:7.1f} ms"
        if "other" in medians:
            line += f"  other {medians['other']:7.1f} ms  other/this {medians['other'] / medians['this']:.2f}x"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
