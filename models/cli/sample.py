"""`rpg sample BUNDLE --out DIR`: generate weights with a trained generator (registered by the
top-level CLI)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from models.request_check import SAMPLERS


def register(subparsers: Any) -> None:
    """Add the `sample` subcommand."""
    sample = subparsers.add_parser(
        "sample",
        help="generate weights with a trained generator",
        description="Sample N parameter sets from BUNDLE (a directory or hf://org/repo) into --out, "
        "one .safetensors each; a generator of LoRA adapters writes one PEFT folder each "
        "(sample_000/adapter_config.json + adapter_model.safetensors), or with --merge the "
        "base network with the adapter merged in (sample_000.safetensors).",
    )
    sample.add_argument("bundle", help="bundle directory or hf://org/repo[@revision]")
    sample.add_argument(
        "--out", type=Path, required=True, help="directory for the .safetensors files"
    )
    sample.add_argument("-n", "--num-samples", type=int, default=1)
    sample.add_argument("--seed", type=int, help="seed (default: random, printed)")
    sample.add_argument(
        "--sampler", choices=SAMPLERS, help="default: the bundle's (config.json defaults)"
    )
    sample.add_argument(
        "--steps",
        type=int,
        help="sampler steps (default: the bundle's; DDPM always runs all timesteps)",
    )
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    sample.add_argument(
        "--condition",
        help='task embedding as JSON: a list of floats, or {"positive_classes": [...]}',
    )
    sample.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="compute precision",
    )
    sample.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sample.add_argument(
        "--merge",
        action="store_true",
        help="adapter generators: write base + adapter as full state dicts of the base "
        "architecture instead of PEFT folders (needs the base weights; their sha256 is checked)",
    )
    sample.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    import secrets

    from models.bundle import BundleError, read_config, resolve_bundle
    from models.cli import command_limits
    from models.generator import Generator
    from models.request_check import check_request
    from models.sampling_io import write_samples
    from models.training import pick_device

    condition = None
    if args.condition is not None:
        try:
            condition = json.loads(args.condition)
        except json.JSONDecodeError as exc:
            print(f"--condition is not valid JSON: {exc}", file=sys.stderr)
            return 2
    try:
        limits = command_limits()
        config = read_config(resolve_bundle(args.bundle), limits)
    except (BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    positive = condition.get("positive_classes") if isinstance(condition, dict) else None
    checked, errors = check_request(
        config,
        task_embedding=None if isinstance(condition, dict) else condition,
        positive_classes=positive,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
    )
    if checked is None:
        for error in errors:
            print(f"error: {error.field}: {error.message}", file=sys.stderr)
        return 2
    try:
        generator = Generator.from_pretrained(
            args.bundle, device=pick_device(args.device), limits=limits
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.merge and not generator.is_adapter:
        print(
            f"error: --merge is for adapter generators; {generator.name!r} makes whole networks",
            file=sys.stderr,
        )
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    started = time.perf_counter()
    samples = generator.sample(
        checked.num_samples,
        condition=checked.task_embedding,
        seed=seed,
        sampler=checked.sampler,
        steps=checked.steps,
        eta=checked.eta,
        dtype=args.dtype,
    )
    seconds = time.perf_counter() - started
    try:
        paths = write_samples(
            samples,
            args.out,
            generator=generator,
            seed=seed,
            sampler=checked.sampler,
            steps=checked.steps,
            condition=checked.task_embedding,
            merge=args.merge,
        )
    except ValueError as exc:  # AdapterError: the base weights are missing or changed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    print(
        f"{checked.num_samples} sample(s) in {seconds:.2f}s ({seconds / checked.num_samples:.3f}s each), seed {seed}",
        file=sys.stderr,
    )
    return 0
