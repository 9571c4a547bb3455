"""``rpg evaluate``: accuracy and novelty of a folder of generated models against their zoo,
or (``--generator``, task-conditioned zoos) per-task accuracy of a generator on seen and
held-out tasks.

The top-level ``rpg`` command calls ``register(subparsers)``; the subcommand's ``func`` takes
the parsed namespace and returns the exit code. The tables it prints are
``models.cli.reports`` (re-exported here: other callers import them from this module too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from models.adapters.spec import AdapterError
from models.cli import command_limits
from models.cli.reports import format_adapter_task_report, format_report, format_task_report
from models.diffusion.samplers import SAMPLERS
from models.errors import UnsafeFileError
from models.evaluation import (
    NOISE_SIGMAS,
    EvaluationError,
    evaluate_generated,
    load_generated_dir,
)
from models.zoo.architecture import add_trust_argument, command_trust
from models.zoo.store import ZooError, load_zoo

__all__ = ["format_report", "format_task_report", "register"]

EXIT_ERROR = 1


def _write_json(report: dict[str, Any], target: str) -> None:
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: the report promises strict JSON (non-finite numbers are null).
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


def _cmd_evaluate_tasks(args: argparse.Namespace) -> int:
    from models.evaluation.tasks import evaluate_tasks
    from models.generator import Generator
    from models.training import pick_device

    if args.plot is not None:
        return _fail("--plot draws --generated folders; task reports have no plot")
    started = time.perf_counter()
    bar = None
    try:
        limits = command_limits()
        zoo = load_zoo(args.zoo, trust_builders=command_trust(args), limits=limits)
        if zoo.condition.get("kind") != "vector":
            return _fail(
                f"zoo {zoo.path} is unconditional: sample a folder "
                "(`rpg sample BUNDLE --out DIR -n 20`) and pass it with --generated"
            )
        generator = Generator.from_pretrained(
            args.generator,
            device=pick_device(args.device),
            trust_builders=command_trust(args),
            limits=limits,
        )
        from models.request_check import default_sampling

        default_sampler, default_steps = default_sampling(generator.config)
        sampler = args.sampler or default_sampler
        steps = args.steps or (default_steps if args.sampler is None else 50)
        from tqdm import tqdm

        bar = tqdm(desc="evaluate tasks", unit="task", disable=None, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if zoo.is_adapter_zoo:
            from models.evaluation.adapter_tasks import evaluate_adapter_tasks

            report = evaluate_adapter_tasks(
                zoo,
                generator,
                samples_per_task=args.samples_per_task,
                seen_tasks=args.seen_tasks,
                sampler=sampler,
                steps=steps,
                eta=args.eta,
                seed=args.seed,
                progress=progress,
            )
        else:
            scorer = None
            if not args.no_baselines:
                from models.evaluation.task_baselines import TaskBaselines

                scorer = TaskBaselines(zoo.build_module(), seed=args.seed)
            report = evaluate_tasks(
                zoo,
                generator,
                samples_per_task=args.samples_per_task,
                seen_tasks=args.seen_tasks,
                sampler=sampler,
                steps=steps,
                eta=args.eta,
                seed=args.seed,
                swap_tensors=args.swap_tensors,
                progress=progress,
                extra_scores=scorer,
            )
            if scorer is not None:
                from models.evaluation.task_baselines import summarize_task_baselines

                report["baselines"] = summarize_task_baselines(report)
    except (ZooError, EvaluationError, ValueError, OSError) as e:
        return _fail(str(e))
    finally:
        if bar is not None:
            bar.close()
    report["duration_s"] = round(time.perf_counter() - started, 3)
    print(format_adapter_task_report(report) if zoo.is_adapter_zoo else format_task_report(report))
    if args.json is not None:
        _write_json(report, args.json)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.generator is not None:
        return _cmd_evaluate_tasks(args)
    started = time.perf_counter()
    try:
        zoo = load_zoo(args.zoo, trust_builders=command_trust(args), limits=command_limits())
        if zoo.condition.get("kind") == "vector":
            return _fail(
                f"zoo {zoo.path} is task-conditioned: each task needs its own comparison, so "
                "pass the generator instead (--generator BUNDLE) and its tasks are sampled"
            )
        from models.evaluation.adapters import has_adapter_folders, load_generated_adapters

        if zoo.is_adapter_zoo:
            if not has_adapter_folders(Path(args.generated)):
                return _fail(
                    f"zoo {zoo.path} holds LoRA adapters: pass the folder of PEFT folders that "
                    f"`rpg sample` wrote (sample_000/adapter_config.json, ...); {args.generated} "
                    "has none (--merge output is whole networks, not adapters)"
                )
            names, state_dicts = load_generated_adapters(Path(args.generated), zoo)
        else:
            names, state_dicts = load_generated_dir(args.generated)
        report = evaluate_generated(
            zoo, state_dicts, names, seed=args.seed, baselines=not args.no_baselines
        )
    except (ZooError, EvaluationError, AdapterError, UnsafeFileError) as e:
        return _fail(str(e))
    report["duration_s"] = round(time.perf_counter() - started, 3)
    print(format_report(report))
    if args.json is not None:
        _write_json(report, args.json)
    if args.plot is not None:
        from models.evaluation.plot import plot_accuracy_vs_similarity

        try:
            written = plot_accuracy_vs_similarity(report, args.plot)
        except EvaluationError as e:
            return _fail(str(e))
        print(f"wrote {written}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` to a parser's subcommands."""
    sigmas = " / ".join(f"{s:g}" for s in NOISE_SIGMAS)
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy and novelty of generated models against their zoo",
        description="Evaluate every .safetensors in --generated (state dicts of the zoo's "
        "architecture) on the zoo's test split: accuracy (n, mean, median, min, max) for zoo "
        "and generated models, and novelty: for each generated model the max IoU of its "
        "wrong-prediction set with a zoo checkpoint and its min L2 distance to the zoo in "
        f"normalized parameter space, beside the zoo itself (leave-one-out) and zoo "
        f"checkpoints plus Gaussian noise (sigma {sigmas}), and the baselines of Zeng et al. 2025 "
        "(--no-baselines skips them): zoo checkpoints plus noise scaled to each tensor's zoo "
        "std with sigma matched to the generated mean accuracy, averages of 2, 4 and 8 random "
        "checkpoints, and a per-value Gaussian fitted to the zoo. Task-conditioned zoos "
        "(digits-tasks): pass --generator BUNDLE instead; it samples models for every held-out "
        "task and a seeded sample of seen tasks and compares their accuracy on each task's "
        "binary test split with the trained models of the same task, the majority-class "
        "baseline and the nearest seen task's models (plain and balanced accuracy).",
    )
    p.add_argument("--zoo", required=True, help="zoo directory (with zoo.json)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--generated", help="folder of generated .safetensors files")
    what.add_argument(
        "--generator",
        metavar="BUNDLE",
        help="generator bundle (directory or hf://org/repo) to sample per task; for "
        "task-conditioned zoos",
    )
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also write accuracy vs max IoU as a PNG")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the noise rows and baselines, or of the sampled models and seen tasks "
        "(default: 0)",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the baselines of Zeng et al. 2025 (noise matched to the generated "
        "accuracy by bisection, averages of 2 / 4 / 8 checkpoints, per-value Gaussian): the "
        "bisection alone runs the whole zoo 10 times, which quick runs can do without",
    )
    p.add_argument(
        "--samples-per-task",
        type=int,
        default=10,
        help="--generator: models sampled per task (default: 10)",
    )
    p.add_argument(
        "--seen-tasks",
        type=int,
        default=20,
        help="--generator: training tasks evaluated beside the held-out ones (default: 20)",
    )
    p.add_argument(
        "--sampler", choices=SAMPLERS, help="--generator (default: the bundle's, config.json)"
    )
    p.add_argument(
        "--steps",
        type=int,
        help="--generator: denoiser steps (default: the bundle's with its sampler, else 50)",
    )
    p.add_argument(
        "--eta", type=float, default=0.0, help="--generator: DDIM eta (0: deterministic)"
    )
    p.add_argument(
        "--swap-tensors",
        action="store_true",
        help="--generator: also score every generated model once per tensor with that tensor "
        "taken from the task's trained model, to see which part the generator gets wrong, "
        "and report how much of each tensor's task-specific part it reproduces",
    )
    p.add_argument("--device", default="cpu", help="--generator: cpu | cuda | auto")
    add_trust_argument(p)
    p.set_defaults(func=_cmd_evaluate)
