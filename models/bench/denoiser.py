"""`rpg bench denoiser`: the tiny preset's U-Net and the mlp denoiser side by side on one zoo.

For each kind, a generator is built exactly as `rpg train --preset P --denoiser KIND` builds it
(untrained: cost does not depend on the weights) and one model of the zoo's architecture is
sampled with the kind's default sampler at the same number of denoiser evaluations:

- FLOPs per generated parameter per step, counted by `torch.utils.flop_counter.FlopCounterMode`
  over two real sampling calls (`steps` and `steps + 1` evaluations: the difference is one
  step, without the backbone and the once-per-call terms);
- sampling wall time of one model at `steps` evaluations (median of `repeats`), the same
  process, one after the other;

and the ratios U-Net / mlp (the issue's targets: FLOPs at least 10x fewer, time 8x less).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["register_denoiser_bench", "run_denoiser_bench"]

KINDS = ("unet", "mlp")


def _generator(zoo_path: Path, preset: str, kind: str) -> Any:
    """An untrained generator with the config `rpg train --preset --denoiser` would train."""
    import torch

    from models.generator import Generator
    from models.rpg import RPGModel
    from models.training.data import fit_tokenizer
    from models.training.options import TrainConfig, build_model_config
    from models.zoo.store import load_zoo

    zoo = load_zoo(zoo_path).training_zoo()
    options = TrainConfig(preset=preset, denoiser=kind)  # type: ignore[arg-type]
    config, _ = build_model_config(zoo, 10**9, options, 1)  # size: the preset is given
    tokenizer = fit_tokenizer(zoo.files()[:1], token_size=config.token_size, granularity="tensor")
    torch.manual_seed(0)
    return Generator(RPGModel(config, tokenizer.positions()), tokenizer, {"name": kind})


def _sampler(generator: Any) -> str:
    from models.config import PRESETS

    sampler, _ = PRESETS["tiny"].sampling(generator.model.config.diffusion.objective)
    return sampler


def _flops(generator: Any, sampler: str, steps: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        generator.sample(num_samples=1, seed=0, sampler=sampler, steps=steps)
    return int(counter.get_total_flops())


def run_denoiser_bench(
    zoo_path: Path, *, preset: str = "tiny", steps: int = 4, repeats: int = 3
) -> dict[str, Any]:
    """Measure every kind on the zoo; returns the report (JSON-safe)."""
    import torch

    report: dict[str, Any] = {
        "zoo": str(zoo_path),
        "preset": preset,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "kinds": {},
    }
    for kind in KINDS:
        generator = _generator(zoo_path, preset, kind)
        sampler = _sampler(generator)
        per_step = _flops(generator, sampler, steps + 1) - _flops(generator, sampler, steps)
        params = generator.num_parameters
        generator.sample(num_samples=1, seed=0, sampler=sampler, steps=1)  # warm-up
        seconds = []
        for repeat in range(repeats):
            started = time.perf_counter()
            generator.sample(num_samples=1, seed=repeat, sampler=sampler, steps=steps)
            seconds.append(time.perf_counter() - started)
        report["kinds"][kind] = {
            "sampler": sampler,
            "generated_parameters": params,
            "num_tokens": generator.tokenizer.num_tokens,
            "flops_per_step": per_step,
            "flops_per_parameter_per_step": per_step / params,
            "sample_seconds": statistics.median(seconds),
            "sample_seconds_all": seconds,
        }
        del generator
    unet, mlp = report["kinds"]["unet"], report["kinds"]["mlp"]
    report["ratios"] = {
        "flops_unet_over_mlp": unet["flops_per_step"] / mlp["flops_per_step"],
        "time_unet_over_mlp": unet["sample_seconds"] / mlp["sample_seconds"],
    }
    return report


def _print(report: dict[str, Any]) -> None:
    print(
        f"zoo {report['zoo']}, preset {report['preset']}, {report['steps']} denoiser "
        f"evaluations per token, {report['threads']} torch thread(s)"
    )
    print(f"{'kind':<6}{'sampler':<16}{'FLOP/param/step':>17}{'s per model':>13}")
    for kind, row in report["kinds"].items():
        print(
            f"{kind:<6}{row['sampler']:<16}{row['flops_per_parameter_per_step']:>17,.0f}"
            f"{row['sample_seconds']:>13.2f}"
        )
    ratios = report["ratios"]
    print(
        f"unet / mlp: {ratios['flops_unet_over_mlp']:.1f}x the FLOPs per step (target >= 10), "
        f"{ratios['time_unet_over_mlp']:.1f}x the sampling time (target >= 8)"
    )


def _cmd_denoiser(args: argparse.Namespace) -> int:
    report = run_denoiser_bench(
        args.zoo, preset=args.preset, steps=args.steps, repeats=args.repeats
    )
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register_denoiser_bench(sub: Any) -> None:
    """Add `bench denoiser` to the `bench` subcommands."""
    bench = sub.add_parser(
        "denoiser",
        help="U-Net vs mlp denoiser: FLOPs per generated parameter per step, sampling time",
        description="Side by side on one zoo, for the preset's U-Net and its mlp denoiser: "
        "FLOPs per generated parameter per step (FlopCounterMode over real sampling calls), "
        "sampling wall time of one model at equal denoiser evaluations, and the ratios.",
    )
    bench.add_argument("--zoo", type=Path, required=True, help="zoo directory")
    bench.add_argument("--preset", default="tiny", help="the preset both kinds come from")
    bench.add_argument("--steps", type=int, default=4, help="denoiser evaluations per token")
    bench.add_argument("--repeats", type=int, default=3, help="timed samples per kind (median)")
    bench.add_argument("--json", type=Path, help="also write the report here")
    bench.set_defaults(func=_cmd_denoiser)
