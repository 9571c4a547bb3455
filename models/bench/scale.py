"""`rpg bench scale`: the ResNet-18 zoo end to end, beside the paper's ResNet-18 numbers.

One prepared command: build the zoo, let `rpg plan` pick the preset (and a micro-batch when
the step would not fit the device), train, sample with DDIM, score generated models and the
zoo on the digits test split, and report times and peak memory (GPU memory on CUDA, the
process's peak RSS on CPU). The GPU command is the default; ``--small`` runs the same
mechanism on the 1.1M-parameter ResNet at a size a CPU finishes in minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.zoo.build import DigitsKind

__all__ = ["PAPER_RESNET18", "register_scale", "run_scale"]

# RPG.md (paper v2): ImageNet-1K top-1 of ResNet-18 (11.7M), zoo mean vs RPG best/mean/min of
# 10 samples; DDPM-1000 sampling on one H100: 1.8 min with 256 tokens per chunk.
PAPER_RESNET18 = {
    "zoo_mean": 70.0,
    "best": 69.9,
    "mean": 69.5,
    "min": 69.0,
    "sampling_minutes_ddpm1000_h100": 1.8,
}


def _peak_memory(device: str) -> dict[str, float]:
    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_scale(
    work: Path,
    *,
    small: bool,
    num_checkpoints: int,
    steps: int,
    num_samples: int,
    ddim_steps: int,
    device: str,
    preset: str | None = None,
    seed: int = 0,
    denoiser: str | None = None,
) -> dict[str, Any]:
    """Build, plan, train, sample, evaluate; returns the report (JSON-safe)."""
    from models.cli.plan import make_plan
    from models.generator import Generator
    from models.training import TrainConfig, pick_device, train
    from models.zoo import digits
    from models.zoo.build import build_digits_zoo
    from models.zoo.store import load_zoo

    kind: DigitsKind = "digits-resnet18-small" if small else "digits-resnet18"
    recipe = digits.TrainingRecipe(epochs=2, lr=1e-3, batch_size=32) if small else None
    zoo_dir = work / kind
    bundle = work / f"{kind}-generator" if denoiser is None else work / f"{kind}-{denoiser}"
    times: dict[str, float] = {}
    started = time.perf_counter()
    if (zoo_dir / "zoo.json").is_file():
        zoo = load_zoo(zoo_dir)
    else:
        zoo = build_digits_zoo(
            kind, zoo_dir, num_checkpoints=num_checkpoints, recipe=recipe, progress=False
        )
    times["zoo_s"] = time.perf_counter() - started

    torch_device = pick_device(device)
    plan = make_plan(zoo_dir, preset=preset, denoiser=denoiser, device=torch_device.type)
    micro = plan["train"]["micro_batch"]
    if not plan["device"].get("train_fits", True):
        micro = max(1, micro // 4)  # the planner's first advice: smaller passes
    options = TrainConfig(
        preset=plan["preset"],
        steps=steps,
        seed=seed,
        device=str(torch_device),
        micro_batch=micro,
        save_every=0,
        progress=False,
        denoiser=denoiser,  # type: ignore[arg-type]  # argparse choices
    )
    started = time.perf_counter()
    result = train(zoo_dir, bundle, options)
    times["train_s"] = time.perf_counter() - started

    generator = Generator.from_pretrained(bundle, device=torch_device)
    started = time.perf_counter()
    # DDIM for an epsilon generator; a flow generator's own default (flow-midpoint, 4 steps)
    sampler, sample_steps = "ddim", ddim_steps
    if generator.model.config.diffusion.objective == "flow":
        sampler, sample_steps = plan["sample"]["sampler"], plan["sample"]["steps"]
    samples = generator.sample(num_samples, seed=seed, sampler=sampler, steps=sample_steps)  # type: ignore[arg-type]
    times["sample_s_per_model"] = (time.perf_counter() - started) / num_samples

    split = digits.split_from_spec(zoo.dataset or {})
    module = zoo.build_module()
    accuracies = []
    for state_dict in samples:
        module.load_state_dict(state_dict, strict=True)
        accuracies.append(digits.accuracy(module, split.x_test, split.y_test))
    zoo_acc = [a for a in zoo.accuracies() if a is not None]
    return {
        "zoo": {"kind": kind, "checkpoints": len(zoo), "accuracy_mean": statistics.fmean(zoo_acc)},
        "plan": {
            "preset": plan["preset"],
            "denoiser": plan["denoiser"],
            "generator_parameters": plan["generator_parameters"],
            "predicted_train_peak_gib": plan["train"]["peak_bytes"] / 2**30,
            "micro_batch": micro,
        },
        "train": {"steps": result.steps, "final_loss": result.final_loss},
        "generated": {
            "n": len(accuracies),
            "mean": statistics.fmean(accuracies),
            "min": min(accuracies),
            "max": max(accuracies),
            "sampler": f"{sampler}-{sample_steps}",
        },
        "times": times,
        "memory": _peak_memory(str(torch_device)),
        "paper_resnet18_imagenet": PAPER_RESNET18,
    }


def _cmd_scale(args: argparse.Namespace) -> int:
    report = run_scale(
        args.work,
        small=args.small,
        num_checkpoints=args.num_checkpoints or (4 if args.small else 50),
        steps=args.steps or (20 if args.small else 5000),
        num_samples=args.num_samples,
        ddim_steps=args.ddim_steps,
        device=args.device,
        preset=args.preset or ("tiny" if args.small else None),
        seed=args.seed,
        denoiser=args.denoiser,
    )
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def register_scale(sub: Any) -> None:
    """Add `bench scale` to the `bench` subcommands."""
    scale = sub.add_parser(
        "scale",
        help="ResNet-18 zoo -> plan -> train -> DDIM samples -> accuracy, times, peak memory",
        description="The real-size benchmark (a GPU command: `rpg bench scale --device cuda`). "
        "--small runs it on the 1.1M-parameter ResNet at CPU size.",
    )
    scale.add_argument("--work", type=Path, default=Path("data/bench/scale"))
    scale.add_argument("--small", action="store_true", help="1.1M-parameter ResNet, few steps")
    scale.add_argument("--num-checkpoints", type=int, help="zoo size (default: 50; small: 4)")
    scale.add_argument("--steps", type=int, help="training steps (default: 5000; small: 20)")
    scale.add_argument(
        "--preset", help="override the planner's preset (default: planned; small: tiny)"
    )
    scale.add_argument(
        "--denoiser",
        choices=["unet", "mlp"],
        help="denoiser kind (default: the preset's); a flow generator samples with its default",
    )
    scale.add_argument("-n", "--num-samples", type=int, default=10)
    scale.add_argument("--ddim-steps", type=int, default=60)
    scale.add_argument("--device", default="auto", help="auto | cpu | cuda")
    scale.add_argument("--seed", type=int, default=0)
    scale.add_argument("--json", type=Path, help="also write the report here")
    scale.set_defaults(func=_cmd_scale)
