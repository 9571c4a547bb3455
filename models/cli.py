"""`rpg train` and `rpg sample`: the generator's command line (registered by the top-level CLI)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from models.config import PRESETS
from models.request_check import SAMPLERS


def register(subparsers: Any) -> None:
    """Add the `train` and `sample` subcommands."""
    train = subparsers.add_parser(
        "train",
        help="train an RPG generator on a zoo of checkpoints",
        description=(
            "Train an RPG generator on ZOO (a directory of .safetensors state dicts of one "
            "architecture, optionally with zoo.json) and write a bundle (config.json + "
            "model.safetensors) to --out. Runs under torchrun for multi-GPU (DDP) unchanged."
        ),
    )
    train.add_argument("zoo", type=Path, help="zoo directory")
    train.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    train.add_argument(
        "--preset", choices=sorted(PRESETS), help="size preset (default: by parameter count)"
    )
    train.add_argument(
        "--backbone", choices=["mamba", "lstm", "transformer", "gmlp"], default="mamba"
    )
    train.add_argument(
        "--steps",
        type=int,
        help="training steps (default: the preset's recipe; conditional zoos have their own: "
        "README, Task-conditioned generation)",
    )
    train.add_argument("--token-size", type=int, help="values per token (default: the preset's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    train.add_argument(
        "--resume", action="store_true", help="continue from the training state in --out"
    )
    train.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    train.add_argument("--batch-size", type=int, help="checkpoints per step")
    train.add_argument("--diffusion-batch", type=int, help="tokens the denoiser trains on per step")
    train.add_argument(
        "--save-every",
        type=int,
        default=500,
        help="save the bundle every N steps (0: only at the end)",
    )
    train.add_argument(
        "--permutation-states",
        choices=["run", "checkpoint"],
        default="run",
        help="one permutation state per training run (default) or per checkpoint",
    )
    train.add_argument(
        "--condition-mode",
        choices=["all", "gate"],
        default="all",
        help="conditional zoos: add the task embedding to all tokens, or through a learned per-token gate",
    )
    train.add_argument(
        "--ema-decay",
        type=float,
        help="keep an exponential moving average of the weights with this decay and save it "
        "(default: the preset's: 0.995 for tiny, none for the paper presets; 0: off)",
    )
    train.add_argument("--granularity", choices=["tensor", "channel"], default="tensor")
    train.add_argument(
        "--token-weighting",
        choices=["uniform", "tensor"],
        help="which tokens the denoiser trains on: uniformly, or an equal share per tensor "
        "(default: tensor on a conditional zoo, uniform otherwise)",
    )
    train.add_argument(
        "--mean-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regress each token's mean from its prototype and let the denoiser model the "
        "residual (default: on for a conditional zoo, off otherwise)",
    )
    train.add_argument("--num-layers", type=int, default=2, help="backbone layers")
    train.add_argument("--name", help="generator name (default: the zoo's architecture name)")
    train.add_argument(
        "--micro-batch",
        type=int,
        help="checkpoints per forward/backward pass; gradients accumulate over the batch "
        "(default: the whole batch at once)",
    )
    train.add_argument(
        "--checkpoint-chunk",
        type=int,
        help="tokens per activation-checkpointed backbone piece (default: automatic for long "
        "sequences, over 4096 tokens per pass; 0: off)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    sample = subparsers.add_parser(
        "sample",
        help="generate weights with a trained generator",
        description="Sample N parameter sets from BUNDLE (a directory or hf://org/repo) into --out, one .safetensors each.",
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
    sample.set_defaults(func=_sample)


def _train(args: argparse.Namespace) -> int:
    from models.training import TrainConfig, train

    options = TrainConfig(
        preset=args.preset,
        backbone=args.backbone,
        steps=args.steps,
        token_size=args.token_size,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        lr=args.lr,
        batch_size=args.batch_size,
        diffusion_batch=args.diffusion_batch,
        save_every=args.save_every,
        permutation_states=args.permutation_states,
        condition_mode=args.condition_mode,
        granularity=args.granularity,
        token_weighting=args.token_weighting,
        mean_head=args.mean_head,
        ema_decay=args.ema_decay,
        num_layers=args.num_layers,
        name=args.name,
        progress=not args.no_progress,
        micro_batch=args.micro_batch,
        checkpoint_chunk=args.checkpoint_chunk,
    )
    result = train(args.zoo, args.out, options)
    print(
        f"trained {result.steps} steps in {result.seconds:.1f}s ({result.steps_per_second:.2f} steps/s); "
        f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}; bundle: {result.bundle}"
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    import secrets

    from models.bundle import BundleError, read_config, resolve_bundle
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
        config = read_config(resolve_bundle(args.bundle))
    except BundleError as exc:
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
    generator = Generator.from_pretrained(args.bundle, device=pick_device(args.device))
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
    paths = write_samples(
        samples,
        args.out,
        generator=generator,
        seed=seed,
        sampler=checked.sampler,
        steps=checked.steps,
        condition=checked.task_embedding,
    )
    for path in paths:
        print(path)
    print(
        f"{len(paths)} sample(s) in {seconds:.2f}s ({seconds / len(paths):.3f}s each), seed {seed}",
        file=sys.stderr,
    )
    return 0
