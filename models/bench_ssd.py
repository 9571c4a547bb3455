"""Time the chunked SSD scan (``ssd_chunked``), optionally against another version of it.

    python -m models.bench_ssd [--against OLD_SSD.py] [--rounds 5]

Shapes: the tiny preset's mixer (8 heads of 64 channels, one group, state 32, chunk 64) on a
training piece (batch 8, 512 steps: forward + backward, and forward alone) and on a whole
long sequence as sampling runs it (batch 1, 16,384 steps, forward). One thread, freed memory
kept (``models.heap``). With ``--against``, the other file's ``ssd_chunked`` runs interleaved
with this one on the same inputs, round by round, so a busy machine slows both alike; the
median of each is printed with the ratio. To compare with an earlier commit:
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

from models.backbones import ssd
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
    """Entry point of ``python -m models.bench_ssd``."""
    parser = argparse.ArgumentParser(
        prog="python -m models.bench_ssd", description=__doc__.split("\n\n")[0]
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
    cases = [
        ("b8 L512 forward+backward", training, True),
        ("b8 L512 forward", training, False),
        ("b1 L16384 forward", sampling, False),
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
