"""`rpg bench quality` and `rpg bench speed`: the numbers on docs/benchmarks/index.md come from here.

Both measure the tiny preset's U-Net (`--denoiser unet`: DDIM and DDPM are epsilon samplers);
`rpg bench denoiser` compares it with the mlp kind.

quality: build (or reuse) a digits zoo, train the tiny generator, sample N models with DDIM
and N with DDPM, evaluate accuracy and novelty against the zoo, print one table with the
time of every stage. speed: training throughput (steps/s) and sampling time per model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from models.bench.denoiser import register_denoiser_bench
from models.bench.scale import register_scale
from models.bench.step_time import register_step_time
from models.sampler_names import SamplerName
from models.zoo.build import DIGITS_ARCHITECTURES


def register(subparsers: Any) -> None:
    """Add `bench quality` and `bench speed`."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks: generated-model quality, training and sampling speed"
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)

    quality = sub.add_parser(
        "quality",
        help="zoo -> train -> sample (DDIM and DDPM) -> evaluate, with stage times",
        description="Build or reuse a digits zoo, train the tiny-preset generator, sample N models with "
        "DDIM and N with DDPM, and evaluate accuracy and novelty against the zoo.",
    )
    quality.add_argument("--zoo-kind", choices=sorted(DIGITS_ARCHITECTURES), default="digits-mlp")
    quality.add_argument(
        "--work", type=Path, help="work directory (default: data/bench/<zoo-kind>)"
    )
    quality.add_argument(
        "--reuse", action="store_true", help="reuse the zoo and bundle in --work if present"
    )
    quality.add_argument("--steps", type=int, help="training steps (default: the tiny preset's)")
    quality.add_argument("-n", "--num-samples", type=int, default=10)
    quality.add_argument("--ddim-steps", type=int, default=50)
    quality.add_argument(
        "--no-ddpm", action="store_true", help="skip the (slow) 1000-step DDPM samples"
    )
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--json", type=Path, help="write the full report here")
    quality.add_argument("--plot", type=Path, help="accuracy vs similarity PNG (DDIM samples)")
    quality.set_defaults(func=_quality)

    speed = sub.add_parser(
        "speed",
        help="training steps/s and sampling seconds per model for the tiny preset",
        description="Train the tiny preset on a digits-mlp zoo for --steps steps (after warm-up) and "
        "time sampling one model with DDIM and DDPM.",
    )
    register_scale(sub)  # rpg bench scale (models/bench/scale.py)
    register_denoiser_bench(sub)  # rpg bench denoiser (models/bench/denoiser.py)
    register_step_time(sub)  # rpg bench step-time (models/bench/step_time.py)

    speed.add_argument("--work", type=Path, default=Path("data/bench/speed"))
    speed.add_argument("--steps", type=int, default=100)
    speed.add_argument("--ddim-steps", type=int, default=50)
    speed.add_argument(
        "--repeats", type=int, default=3, help="samples timed per sampler (median reported)"
    )
    speed.add_argument("--device", default="auto")
    speed.add_argument(
        "--rate-steps",
        type=int,
        default=2,
        help="training steps timed per zoo for tokens/s vs the matmul rate (0: skip)",
    )
    speed.set_defaults(func=_speed)


def _timed(stages: dict[str, float], name: str) -> Any:
    class _Timer:
        def __enter__(self) -> None:
            self.start = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            stages[name] = time.perf_counter() - self.start

    return _Timer()


def _quality(args: argparse.Namespace) -> int:
    from models.cli.evaluate import format_report
    from models.evaluation import evaluate_generated
    from models.generator import Generator
    from models.training import TrainConfig, train
    from models.zoo.build import build_digits_zoo
    from models.zoo.store import load_zoo

    work = args.work or Path("data/bench") / args.zoo_kind
    zoo_dir, bundle_dir = work / "zoo", work / "bundle"
    stages: dict[str, float] = {}
    if args.reuse and (zoo_dir / "zoo.json").is_file():
        stages["zoo build"] = 0.0
    else:
        with _timed(stages, "zoo build"):
            build_digits_zoo(
                args.zoo_kind,
                zoo_dir,
                num_checkpoints=50,
                seed=args.seed,
                progress=False,
                overwrite=True,
            )
    zoo = load_zoo(zoo_dir)
    train_info: dict[str, Any] = {}
    if args.reuse and (bundle_dir / "config.json").is_file():
        stages["train"] = 0.0
    else:
        with _timed(stages, "train"):
            result = train(
                zoo_dir,
                bundle_dir,
                TrainConfig(
                    preset="tiny", denoiser="unet", steps=args.steps, seed=args.seed, save_every=0
                ),
            )
        train_info = {
            "steps": result.steps,
            "steps_per_second": result.steps_per_second,
            "final_loss": result.final_loss,
        }
    generator = Generator.from_pretrained(bundle_dir)
    reports: dict[str, dict[str, Any]] = {}
    runs: list[tuple[SamplerName, int]] = [("ddim", args.ddim_steps)]
    if not args.no_ddpm:
        runs.append(("ddpm", generator.model.config.diffusion.num_timesteps))
    for sampler, steps in runs:
        label = f"{sampler}-{steps}"
        with _timed(stages, f"sample {args.num_samples} x {label}"):
            samples = generator.sample(
                args.num_samples, seed=args.seed, sampler=sampler, steps=steps
            )
        with _timed(stages, f"evaluate {label}"):
            reports[label] = evaluate_generated(zoo, samples, seed=args.seed)
    print(_quality_table(reports, stages, train_info))
    first = next(iter(reports.values()))
    print()
    print(format_report(first))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "stages_s": stages,
            "train": train_info,
            "reports": reports,
            "torch": torch.__version__,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if args.plot:
        from models.evaluation.plot import plot_accuracy_vs_similarity

        plot_accuracy_vs_similarity(first, args.plot)
    return 0


def _quality_table(
    reports: dict[str, dict[str, Any]], stages: dict[str, float], train_info: dict[str, Any]
) -> str:
    lines = ["stage                          seconds"]
    lines += [f"{name:<30} {seconds:8.1f}" for name, seconds in stages.items()]
    if train_info:
        lines.append(
            f"(training: {train_info['steps']} steps, {train_info['steps_per_second']:.2f} steps/s, "
            f"final loss {train_info['final_loss']:.4f})"
        )
    lines += [
        "",
        f"{'accuracy':<14} {'n':>3} {'mean':>7} {'median':>7} {'min':>7} {'max':>7}   {'min L2':>7} {'max IoU':>7}",
    ]
    first = next(iter(reports.values()))
    zoo = first["zoo"]
    lines.append(
        f"{'zoo':<14} {zoo['n']:>3} {zoo['mean']:7.4f} {zoo['median']:7.4f} {zoo['min']:7.4f} {zoo['max']:7.4f}"
    )
    for key in [k for k in first["novelty"] if k.startswith("noise")]:
        summary = first["novelty"][key]["summary"]
        acc = summary["accuracy"]
        lines.append(
            f"{key:<14} {acc['n']:>3} {acc['mean']:7.4f} {acc['median']:7.4f} {acc['min']:7.4f} {acc['max']:7.4f}"
            f"   {summary['min_l2']['mean']:7.3f} {summary['max_iou']['mean']:7.4f}"
        )
    for label, report in reports.items():
        gen = report["generated"]
        summary = report["novelty"]["generated"]["summary"]
        lines.append(
            f"{label:<14} {gen['n']:>3} {gen['mean']:7.4f} {gen['median']:7.4f} {gen['min']:7.4f} {gen['max']:7.4f}"
            f"   {summary['min_l2']['mean']:7.3f} {summary['max_iou']['mean']:7.4f}"
        )
    return "\n".join(lines)


def _speed(args: argparse.Namespace) -> int:
    from models.generator import Generator
    from models.training import TrainConfig, pick_device, train
    from models.zoo.build import build_digits_zoo

    zoo_dir, bundle_dir = args.work / "zoo", args.work / "bundle"
    if not (zoo_dir / "zoo.json").is_file():
        build_digits_zoo("digits-mlp", zoo_dir, num_checkpoints=50, progress=False, overwrite=True)
    device = str(pick_device(args.device))
    # Warm-up run (allocator, kernels), then the timed run.
    train(
        zoo_dir,
        bundle_dir,
        TrainConfig(
            preset="tiny", denoiser="unet", steps=5, device=device, save_every=0, progress=False
        ),
    )
    result = train(
        zoo_dir,
        bundle_dir,
        TrainConfig(
            preset="tiny",
            denoiser="unet",
            steps=args.steps,
            device=device,
            save_every=0,
            progress=False,
        ),
    )
    generator = Generator.from_pretrained(bundle_dir, device=device)
    timings: dict[str, float] = {}
    speed_runs: list[tuple[SamplerName, int]] = [
        ("ddim", args.ddim_steps),
        ("ddpm", generator.model.config.diffusion.num_timesteps),
    ]
    for sampler, steps in speed_runs:
        generator.sample(1, seed=0, sampler=sampler, steps=min(steps, 5))  # warm-up
        times = []
        for seed in range(args.repeats):
            start = time.perf_counter()
            generator.sample(1, seed=seed, sampler=sampler, steps=steps)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        timings[f"{sampler}-{steps}"] = sorted(times)[len(times) // 2]
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"generator: tiny preset, {generator.num_parameters} parameters per model, {generator.tokenizer.num_tokens} tokens"
    )
    print(f"train: {result.steps_per_second:.2f} steps/s ({args.steps} steps, batch 8 checkpoints)")
    for label, seconds in timings.items():
        print(
            f"sample 1 model, {label}: {seconds:.2f} s ({generator.num_parameters / seconds:,.0f} params/s)"
        )
    if args.rate_steps:
        _train_rates(args.work, args.rate_steps)
    return 0


def _train_rates(work: Path, steps: int) -> None:
    """Training tokens/s on digits-mlp and a long-sequence zoo beside the matmul rate."""
    from models.bench.train_rate import matmul_flops_per_second, training_rate
    from models.zoo import digits
    from models.zoo.build import build_digits_zoo

    if not (work / "zoo" / "zoo.json").is_file():
        build_digits_zoo("digits-mlp", work / "zoo", num_checkpoints=50, progress=False)
    resnet = work / "zoo-resnet18-small"
    if not (resnet / "zoo.json").is_file():
        recipe = digits.TrainingRecipe(epochs=2, lr=1e-3, batch_size=32)
        build_digits_zoo("digits-resnet18-small", resnet, num_checkpoints=8, recipe=recipe,
                         progress=False, overwrite=True)  # fmt: skip
    matmul = matmul_flops_per_second()
    print(f"matmul (1024x1024 float32): {matmul / 1e9:.1f} GFLOP/s")
    for name, zoo in (("digits-mlp", work / "zoo"), ("digits-resnet18-small", resnet)):
        rate = training_rate(zoo, work / f"rate-{name}", steps=steps)
        print(
            f"train {name}: {rate['tokens_per_second']:,.0f} tokens/s "
            f"({rate['num_tokens']} tokens x batch {rate['batch_size']}, "
            f"{rate['seconds_per_step']:.2f} s/step), ~{rate['flops_per_second'] / 1e9:.1f} "
            f"GFLOP/s = {rate['flops_per_second'] / matmul:.0%} of the matmul rate"
        )
