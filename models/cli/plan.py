"""`rpg plan ZOO`: a generator's size, training and sampling memory and FLOPs before training.

The numbers come from ``models.plan`` (shapes on the ``meta`` device and a memory model
calibrated on this project's CPU host); on a known device the predicted peaks are compared
with its memory, with what to change when they do not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.training.options import TrainConfig

__all__ = ["DEFAULT_TIME_BUDGET_S", "make_plan", "register"]

GIB = 2**30
DEFAULT_TIME_BUDGET_S = 3600.0  # one hour: the budget a plain `rpg train` is sized for


def _device_memory(device: str) -> tuple[str, int | None]:
    """(description, bytes) of the device's memory; bytes None where it is unknown."""
    if device == "cpu":
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return "cpu (RAM)", int(pages * size)
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{device} ({props.name})", int(props.total_memory)
    return f"{device} (not present here)", None


def make_plan(
    zoo_path: Path,
    *,
    preset: str | None = None,
    denoiser: str | None = None,
    objective: str | None = None,
    batch_size: int | None = None,
    micro_batch: int | None = None,
    checkpoint_chunk: int | None = None,
    device: str = "cpu",
    device_memory: int | None = None,
    options: TrainConfig | None = None,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> dict[str, Any]:
    """The plan as a JSON-safe dict (``rpg plan --json``).

    ``options``: the run's full options (what ``rpg train`` passes); otherwise the keyword
    arguments above on the defaults.
    """

    from models.backbones import backbone_from_config
    from models.config import PRESETS
    from models.plan import Workload, count_parameters, sample_flops, sample_memory, train_memory
    from models.plan_budget import CPU_THROUGHPUT, capacity, step_seconds, train_step_flops
    from models.tokenizer import ParameterTokenizer
    from models.training.options import (
        TrainConfig,
        build_model_config,
        checkpoint_chunk_for,
        default_diffusion_batch,
        distinct_pairs,
        permutation_ids,
        zoo_conditions,
    )
    from models.zoo.store import load_zoo

    if options is None:
        options = TrainConfig(
            preset=preset,
            batch_size=batch_size,
            micro_batch=micro_batch,
            checkpoint_chunk=checkpoint_chunk,
            denoiser=denoiser,  # type: ignore[arg-type]  # argparse choices
            objective=objective,  # type: ignore[arg-type]
        )
    zoo = load_zoo(zoo_path).training_zoo()
    first = zoo.read(zoo.files()[0])
    probe = ParameterTokenizer.fit([first], token_size=1)
    ids, num_states = permutation_ids(zoo, options.permutation_states)
    config, preset_name = build_model_config(zoo, probe.num_parameters, options, num_states)
    chosen = PRESETS[preset_name]
    recipe = chosen.recipe(config.condition_dim > 0, config.denoiser.kind)
    sampler, sampler_steps = chosen.sampling(config.diffusion.objective)
    tokenizer = ParameterTokenizer.fit(
        [first], token_size=config.token_size, granularity=options.granularity
    )
    L, T, N = tokenizer.num_tokens, config.token_size, len(zoo)
    batch = min(options.batch_size or recipe.batch_size, N)
    micro = min(options.micro_batch or batch, batch)
    rows = min(micro, distinct_pairs(ids, zoo_conditions(zoo)))
    steps = config.diffusion.num_timesteps if sampler == "ddpm" else sampler_steps
    ema_decay = chosen.ema_decay if options.ema_decay is None else options.ema_decay
    work = Workload(
        num_checkpoints=N,
        num_tokens=L,
        config=config,
        batch_size=batch,
        micro_batch=micro,
        diffusion_batch=options.diffusion_batch
        or default_diffusion_batch(recipe.diffusion_batch, batch, L),
        checkpoint_chunk=checkpoint_chunk_for(options.checkpoint_chunk, rows, L),
        ema=bool(ema_decay),
        resident=options.resident_bytes >= N * L * T * 4,
        sample_steps=steps,
        device_type="cuda" if device.startswith("cuda") else "cpu",
        backbone_rows=rows,
    )
    import torch

    parameters = count_parameters(config, L)
    with torch.device("meta"):
        backbone = backbone_from_config(config.backbone)
    backbone_parameters = sum(p.numel() for p in backbone.parameters())
    train = train_memory(work, parameters)
    sample = sample_memory(work, parameters)
    flops = train_step_flops(work, backbone_parameters)
    # Throughput is calibrated on the CPU host only; a GPU's step time is not predicted.
    rate = CPU_THROUGHPUT if work.device_type == "cpu" else None
    step_s = None if rate is None else step_seconds(flops, rate, config)
    total_steps = options.steps or recipe.steps
    cap = capacity(config, parameters, probe.num_parameters, L)
    plan: dict[str, Any] = {
        "zoo": {
            "path": str(zoo_path),
            "num_checkpoints": N,
            "num_parameters": probe.num_parameters,
        },
        "preset": preset_name,
        "denoiser": config.denoiser.kind,
        "objective": config.diffusion.objective,
        "config": config.to_dict(),
        "generator_parameters": parameters,
        "capacity": {
            "ratio": cap.ratio,
            "head_rank": cap.head_rank,
            "needed_rank": cap.needed_rank,
            "short": cap.short,
        },
        "tokens": {"num_tokens": L, "token_size": T},
        "train": {
            **train,
            "batch_size": batch,
            "micro_batch": micro,
            "backbone_rows": rows,
            "diffusion_batch": work.diffusion_batch,
            "checkpoint_chunk": work.checkpoint_chunk,
            "zoo_resident": work.resident,
            "steps": total_steps,
            "flops_per_step": flops,
            "step_seconds": step_s,
            "seconds": None if step_s is None else step_s * total_steps,
            "throughput": None if rate is None else rate.source,
            "time_budget_seconds": time_budget_s,
        },
        "sample": {
            **sample,
            "sampler": sampler,
            "steps": steps,
            "flops_per_model": sample_flops(work, backbone_parameters),
        },
    }
    name, memory = _device_memory(device)
    memory = device_memory or memory
    plan["device"] = {"name": name, "memory_bytes": memory}
    if memory is not None:
        plan["device"]["train_fits"] = train["peak_bytes"] <= memory
        plan["device"]["sample_fits"] = sample["peak_bytes"] <= memory
        plan["advice"] = _advice(plan, memory)
    plan["warnings"] = _warnings(plan)
    return plan


def _advice(plan: dict[str, Any], memory: int) -> list[str]:
    """What to change when the predicted peaks exceed the device's memory."""
    from models.config import PRESETS

    advice: list[str] = []
    train = plan["train"]
    if train["peak_bytes"] > memory:
        if train["backbone_rows"] > 1:
            advice.append(
                f"try --micro-batch {max(1, train['micro_batch'] // 2)}: accumulate gradients over "
                "smaller passes (same batch, less activation memory)"
            )
        length = train["checkpoint_chunk"] or plan["tokens"]["num_tokens"]
        if length > 64:
            advice.append(
                f"try --checkpoint-chunk {max(64, length // 2 // 64 * 64)}: shorter backbone pieces"
            )
        if train["ema_bytes"]:
            advice.append("try --ema-decay 0: no averaged copy of the weights")
        names = list(PRESETS)
        smaller = names[: names.index(plan["preset"])]
        if smaller:
            advice.append(f"try --preset {smaller[-1]}: a smaller generator")
        advice.append("try a smaller --token-size: fewer generator parameters")
    if plan["sample"]["peak_bytes"] > memory:
        advice.append("sampling does not fit: use a smaller preset or a device with more memory")
    return advice


def duration(seconds: float) -> str:
    """``95 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _warnings(plan: dict[str, Any]) -> list[str]:
    """Plain warnings: capacity, memory or time short, each with what to change."""
    out: list[str] = []
    cap, train, device = plan["capacity"], plan["train"], plan["device"]
    if cap["short"]:
        out.append(
            f"capacity is short: {plan['generator_parameters']:,} generator parameters for a "
            f"{plan['zoo']['num_parameters']:,}-parameter target ({cap['ratio']:.2f}x), "
            f"prototype rank {cap['head_rank']} for {cap['needed_rank']} needed; choose a "
            "larger --preset (or a smaller --token-size)"
        )
    if device.get("train_fits") is False:
        out.append(
            f"memory is short: training needs {_gib(train['peak_bytes'])}, "
            f"{device['name']} has {_gib(device['memory_bytes'])}"
        )
    seconds, budget = train["seconds"], train["time_budget_seconds"]
    if seconds is not None and seconds > budget:
        fit = int(budget // train["step_seconds"])
        out.append(
            f"time is short: {train['steps']:,} steps x {train['step_seconds']:.2f} s = "
            f"{duration(seconds)}, over the {duration(budget)} budget; --steps {fit:,} "
            "fits, or train in parts (--save-every, then --resume)"
        )
    return out


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _print(plan: dict[str, Any]) -> None:
    train, sample, device = plan["train"], plan["sample"], plan["device"]
    chunk = train["checkpoint_chunk"]
    pieces = f"pieces of {chunk} tokens" if chunk else "the whole sequence at once"
    lines = [
        f"zoo:        {plan['zoo']['path']} ({plan['zoo']['num_checkpoints']} checkpoints, "
        f"{plan['zoo']['num_parameters']:,} parameters each)",
        f"preset:     {plan['preset']}  ({plan['tokens']['num_tokens']:,} tokens of "
        f"{plan['tokens']['token_size']}; {plan['denoiser']} denoiser, {plan['objective']} "
        "objective)",
        f"generator:  {plan['generator_parameters']:,} parameters, "
        f"{plan['capacity']['ratio']:.1f}x the target's; prototype rank "
        f"{plan['capacity']['head_rank']} for min(tokens, token size) = "
        f"{plan['capacity']['needed_rank']}",
        f"training:   peak {_gib(train['peak_bytes'])} at batch {train['batch_size']} "
        f"(micro-batch {train['micro_batch']}, {pieces})",
    ]
    for key in (
        "weights_bytes",
        "gradients_bytes",
        "optimizer_bytes",
        "ema_bytes",
        "zoo_bytes",
        "batch_bytes",
        "activation_bytes",
    ):
        lines.append(f"  {key.removesuffix('_bytes'):<12}{_gib(train[key])}")
    if train["step_seconds"] is None:
        lines.append(
            f"time:       {train['steps']:,} steps; step time not predicted on this device"
        )
    else:
        lines.append(
            f"time:       {train['steps']:,} steps x {train['step_seconds']:.2f} s = "
            f"{duration(train['seconds'])} predicted "
            f"({train['flops_per_step']['total'] / 1e9:.0f} GFLOP per step; throughput "
            f"{train['throughput']})"
        )
    lines.append(
        f"sampling:   peak {_gib(sample['peak_bytes'])} per model, "
        f"{sample['flops_per_model'] / 1e12:.3f} TFLOP per model "
        f"({sample['sampler']}, {sample['steps']} steps)"
    )
    memory = device["memory_bytes"]
    if memory is None:
        lines.append(f"device:     {device['name']}: memory unknown (pass --device-memory GIB)")
    else:
        verdict = "fits" if device["train_fits"] and device["sample_fits"] else "does NOT fit"
        lines.append(f"device:     {device['name']}, {_gib(memory)}: {verdict}")
        lines.extend(f"  - {a}" for a in plan.get("advice", []))
    lines.extend(f"warning:    {w}" for w in plan["warnings"])
    print("\n".join(lines))


def _cmd_plan(args: argparse.Namespace) -> int:
    from models.zoo.store import ZooError

    try:
        plan = make_plan(
            args.zoo,
            preset=args.preset,
            denoiser=args.denoiser,
            objective=args.objective,
            batch_size=args.batch_size,
            micro_batch=args.micro_batch,
            checkpoint_chunk=args.checkpoint_chunk,
            device=args.device,
            device_memory=None if args.device_memory is None else int(args.device_memory * GIB),
            time_budget_s=args.time_budget * 60,
        )
    except (ZooError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        _print(plan)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plan`` to the ``rpg`` subcommands."""
    from models.config import DENOISER_KINDS, PRESETS
    from models.sampler_names import OBJECTIVES

    p = subparsers.add_parser(
        "plan",
        help="size a generator for a zoo before training: parameters, memory, time, FLOPs",
        description="Print the generator's parameter count against the target's (capacity), "
        "the training step's peak memory (weights, gradients, optimizer, EMA, zoo, batch, "
        "activations), the predicted training time (FLOPs per step at a throughput calibrated "
        "on the project's CPU host), sampling memory and FLOPs per generated model, whether "
        "they fit the device, and warnings with what to change when capacity, memory or the "
        "time budget is short.",
    )
    p.add_argument("zoo", type=Path, help="zoo directory")
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: by parameter count")
    p.add_argument(
        "--denoiser", choices=list(DENOISER_KINDS), help="denoiser kind (default: the preset's)"
    )
    p.add_argument(
        "--objective", choices=list(OBJECTIVES), help="training objective (default: the kind's)"
    )
    p.add_argument("--batch-size", type=int, help="checkpoints per step (default: the preset's)")
    p.add_argument("--micro-batch", type=int, help="checkpoints per forward/backward pass")
    p.add_argument("--checkpoint-chunk", type=int, help="tokens per backbone piece (0: off)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--device-memory", type=float, metavar="GIB", help="override its memory")
    p.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET_S / 60,
        metavar="MIN",
        help="warn when the predicted training time exceeds this (default: 60 minutes)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)
