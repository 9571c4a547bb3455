"""Sampler benchmarks: the "Samplers" and "Sampling memory and batching" numbers on docs/benchmarks/index.md.

    python -m models.bench.samplers quality BUNDLE ZOO [--seeds 0 1 2] [--num-samples 8]
    python -m models.bench.samplers batching BUNDLE [--num-samples 8] [--steps 50]

quality: mean test accuracy of generated models (digits zoos) for DDIM-50, DDPM-1000 and
DPM-Solver++ at several step counts, over several seeds, with the wall time of each call;
then the fewest DPM-Solver++ steps whose mean is within `--tolerance` of DDIM-50's, and the
time ratios. batching: one `Generator.sample` call of N samples against N calls of one.
Run with OMP_NUM_THREADS=1 on a shared machine; every number is printed, nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.diffusion.samplers import SamplerName
from models.generator import Generator
from models.zoo import digits
from models.zoo.architecture import add_trust_argument, command_trust
from models.zoo.store import load_zoo


def _accuracies(
    generator: Generator, samples: Sequence[dict[str, torch.Tensor]], split: Any
) -> list[float]:
    module = generator.build_module()
    scores = []
    for state in samples:
        module.load_state_dict(state, strict=True)
        with torch.no_grad():
            scores.append(digits.accuracy(module, split.x_test, split.y_test))
    return scores


def _timed_sample(
    generator: Generator, num: int, seed: int, sampler: SamplerName, steps: int
) -> tuple[list[dict[str, torch.Tensor]], float]:
    start = time.perf_counter()
    samples = generator.sample(num, seed=seed, sampler=sampler, steps=steps)
    return samples, time.perf_counter() - start


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy and time per (sampler, steps) setting; see the module docstring."""
    trust = command_trust(args)
    generator = Generator.from_pretrained(args.bundle, trust_builders=trust)
    zoo = load_zoo(args.zoo, trust_builders=trust)
    if zoo.dataset is None:
        raise SystemExit(f"zoo {args.zoo} records no dataset; build it with `rpg zoo build`")
    split = digits.split_from_spec(zoo.dataset)
    timesteps = generator.model.config.diffusion.num_timesteps
    settings: list[tuple[SamplerName, int, int, list[int]]] = [
        ("ddim", args.ddim_steps, args.num_samples, args.seeds)
    ]
    settings += [("dpm-solver++", s, args.num_samples, args.seeds) for s in args.dpm_steps]
    if args.ddpm_samples > 0:
        settings.append(("ddpm", timesteps, args.ddpm_samples, args.seeds[:1]))
    generator.sample(1, seed=0, steps=2)  # warm-up (allocations, kernel choice)
    rows: dict[str, dict[str, Any]] = {}
    for sampler, steps, num, seeds in settings:
        label = f"{sampler}-{steps}"
        scores: list[float] = []
        seconds = 0.0
        for seed in seeds:
            samples, took = _timed_sample(generator, num, seed, sampler, steps)
            scores += _accuracies(generator, samples, split)
            seconds += took
        rows[label] = {
            "sampler": sampler,
            "steps": steps,
            "models": len(scores),
            "seeds": list(seeds),
            "mean_accuracy": statistics.fmean(scores),
            "min_accuracy": min(scores),
            "seconds_per_model": seconds / len(scores),
        }
        print(
            f"{label}: mean {rows[label]['mean_accuracy']:.4f} over {len(scores)} models, "
            f"{rows[label]['seconds_per_model']:.3f} s/model",
            flush=True,
        )
    zoo_mean = statistics.fmean(c.accuracy for c in zoo.checkpoints if c.accuracy is not None)
    return {"zoo_mean_accuracy": zoo_mean, "rows": rows, **_verdict(rows, args)}


def _verdict(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ddim = rows[f"ddim-{args.ddim_steps}"]
    within = [
        row["steps"]
        for row in rows.values()
        if row["sampler"] == "dpm-solver++"
        and row["mean_accuracy"] >= ddim["mean_accuracy"] - args.tolerance / 100
    ]
    fewest = min(within) if within else None
    verdict: dict[str, Any] = {"fewest_dpm_steps_within_tolerance": fewest}
    if fewest is not None:
        dpm = rows[f"dpm-solver++-{fewest}"]
        verdict["time_ratio_vs_ddim"] = dpm["seconds_per_model"] / ddim["seconds_per_model"]
        ddpm = next((r for r in rows.values() if r["sampler"] == "ddpm"), None)
        if ddpm is not None:
            verdict["time_ratio_vs_ddpm"] = dpm["seconds_per_model"] / ddpm["seconds_per_model"]
    return verdict


def run_batching(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds for one call of N samples vs N calls of one (same seeds' samples); the two are
    alternated `--repeats` times and the fastest of each kept, so that a busy neighbour on a
    shared machine slows both alike."""
    generator = Generator.from_pretrained(args.bundle)
    generator.sample(1, seed=0, steps=2)  # warm-up
    options: dict[str, Any] = {
        "sampler": args.sampler,
        "steps": args.steps,
        "chunk_size": args.chunk_size,
    }
    one_call, separate = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        generator.sample(args.num_samples, seed=0, **options)
        one_call.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.num_samples):
            generator.sample(1, seed=0, **options)
        separate.append(time.perf_counter() - start)
    result = {
        "num_parameters": generator.num_parameters,
        "num_tokens": generator.tokenizer.num_tokens,
        "chunk_size": args.chunk_size,
        "one_call_s": min(one_call),
        "separate_calls_s": min(separate),
        "speedup": min(separate) / min(one_call),
        "all_one_call_s": one_call,
        "all_separate_calls_s": separate,
    }
    print(
        f"{generator.num_parameters:,} parameters ({generator.tokenizer.num_tokens} tokens), "
        f"{args.sampler}-{args.steps}, chunk {args.chunk_size}: one call of {args.num_samples} "
        f"{min(one_call):.2f} s, {args.num_samples} calls of 1 {min(separate):.2f} s "
        f"(x{min(separate) / min(one_call):.2f})"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m models.bench.samplers`."""
    parser = argparse.ArgumentParser(
        prog="python -m models.bench.samplers", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    quality = sub.add_parser("quality", help="accuracy and time per sampler setting")
    quality.add_argument("bundle", type=Path)
    quality.add_argument("zoo", type=Path)
    quality.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    quality.add_argument("--num-samples", type=int, default=8, help="models per seed and setting")
    quality.add_argument("--ddim-steps", type=int, default=50)
    quality.add_argument("--dpm-steps", type=int, nargs="+", default=[5, 8, 10, 15, 20])
    quality.add_argument(
        "--ddpm-samples", type=int, default=4, help="DDPM-1000 models (first seed only; 0: skip)"
    )
    quality.add_argument("--tolerance", type=float, default=0.1, help="accuracy points")
    quality.add_argument("--json", type=Path, help="also write the results here")
    add_trust_argument(quality)
    batching = sub.add_parser("batching", help="one call of N samples vs N calls of one")
    batching.add_argument("bundle", type=Path)
    batching.add_argument("--num-samples", type=int, default=8)
    batching.add_argument("--sampler", default="ddim")
    batching.add_argument("--steps", type=int, default=50)
    batching.add_argument("--chunk-size", type=int, default=1024, help="tokens per denoiser call")
    batching.add_argument("--repeats", type=int, default=2)
    batching.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run_quality(args) if args.command == "quality" else run_batching(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
