"""`rpg train ZOO --out BUNDLE`: train a generator (registered by the top-level CLI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from models.config import DENOISER_KINDS, PRESETS
from models.sampler_names import OBJECTIVES


def register(subparsers: Any) -> None:
    """Add the `train` subcommand."""
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
        "--denoiser",
        choices=list(DENOISER_KINDS),
        help="denoiser kind: the paper's 1-D conv U-Net or the GEMM-shaped mlp "
        "(default: the preset's; docs/explanation/denoisers.md)",
    )
    train.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        help="training objective: epsilon (DDPM noise prediction) or flow (rectified flow, "
        "data prediction; samplers flow-euler / flow-midpoint) (default: the kind's: "
        "epsilon for unet, flow for mlp)",
    )
    train.add_argument(
        "--steps",
        type=int,
        help="training steps (default: the preset's recipe; conditional zoos have their own: "
        "docs/explanation/task-conditioning.md)",
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
    train.add_argument(
        "--ignore-plan",
        action="store_true",
        help="train even when `rpg plan` predicts that training does not fit the device's "
        "memory (by default such a run is refused before anything is built or written)",
    )
    train.add_argument(
        "--device-memory",
        type=float,
        metavar="GIB",
        help="the memory the plan may count on (default: the device's; less on a shared machine)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from models.training import TrainConfig, train

    options = TrainConfig(
        preset=args.preset,
        backbone=args.backbone,
        denoiser=args.denoiser,
        objective=args.objective,
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
    from models.bundle import read_config
    from models.naming import describe_origin, name_origin

    if not _plan_allows(args, options):
        return 1
    result = train(args.zoo, args.out, options)
    print(
        f"trained {result.steps} steps in {result.seconds:.1f}s ({result.steps_per_second:.2f} steps/s); "
        f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}; bundle: {result.bundle}"
    )
    config = read_config(Path(result.bundle))
    print(f"served as {config['name']!r}: {describe_origin(name_origin(config))}")
    return 0


def _plan_allows(args: argparse.Namespace, options: Any) -> bool:
    """Plan the run (`rpg plan`) before building anything: print its summary and warnings, and
    refuse, with the plan's advice, a run whose training memory does not fit the device."""
    from models.cli.plan import duration, make_plan
    from models.training import pick_device
    from models.zoo.store import ZooError

    try:
        device = pick_device(args.device)
        limit = None if args.device_memory is None else int(args.device_memory * 2**30)
        plan = make_plan(args.zoo, options=options, device=str(device), device_memory=limit)
    except (ZooError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    train, memory = plan["train"], plan["device"]["memory_bytes"]
    gib = 2**30
    budget = "" if memory is None else f" of {memory / gib:.1f} GiB"
    time = (
        ""
        if train["seconds"] is None
        else f", about {duration(train['seconds'])} ({train['steps']:,} steps x "
        f"{train['step_seconds']:.2f} s, predicted at a throughput {train['throughput']})"
    )
    print(
        f"plan: preset {plan['preset']}, {plan['generator_parameters']:,} generator parameters "
        f"({plan['capacity']['ratio']:.1f}x the target's), training peak "
        f"{train['peak_bytes'] / gib:.1f} GiB{budget}{time}"
    )
    for warning in plan["warnings"]:
        print(f"plan warning: {warning}", file=sys.stderr)
    if plan["device"].get("train_fits", True) or args.ignore_plan:
        return True
    lines = [
        f"error: refusing to train: the plan predicts {train['peak_bytes'] / gib:.1f} GiB at "
        f"peak, over the {memory / gib:.1f} GiB of {plan['device']['name']}; nothing was "
        "written. Change the run:",
        *(f"  - {a}" for a in plan.get("advice", [])),
        "(`rpg plan ZOO` shows the whole plan; --ignore-plan trains anyway)",
    ]
    print("\n".join(lines), file=sys.stderr)
    return False
