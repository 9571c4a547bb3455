"""`rpg bench step-time ZOO`: the plan's predicted step time and peak memory beside measured.

Two measurements, both in this process on this machine:

- ``parts``: one training step's backbone pass (forward and backward on the distinct rows)
  and denoiser pass (forward and backward on the drawn tokens), timed apart, each divided
  into the FLOPs ``models.plan_budget`` counts for it: the throughputs the plan's
  ``CPU_THROUGHPUT`` is calibrated from.
- ``run``: ``rpg train`` for ``--steps`` steps in a child process (its own peak RSS),
  with the plan's settings: seconds per step and peak memory beside the prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["measure_parts", "register_step_time"]


def _timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def measure_parts(plan: dict[str, Any], *, repeats: int = 3) -> dict[str, float]:
    """Seconds and FLOP/s of the backbone and the denoiser parts of a step of ``plan``."""
    import torch

    from models.config import RPGConfig
    from models.rpg import RPGModel

    config = RPGConfig.from_dict(plan["config"])
    L, T = plan["tokens"]["num_tokens"], plan["tokens"]["token_size"]
    train = plan["train"]
    positions = torch.stack([torch.zeros(L, dtype=torch.long), torch.arange(L)], dim=1)
    model = RPGModel(config, positions)
    rows, chunk = train["backbone_rows"], train["checkpoint_chunk"]
    passes = -(-train["batch_size"] // train["micro_batch"])
    ids = torch.zeros(rows, dtype=torch.long)

    def backbone() -> None:
        x = model._inputs(ids, None, 0, L)  # (rows, L, D)
        model.backbone(x, checkpoint_chunk=chunk).square().mean().backward()

    n, d_out = train["diffusion_batch"], model.backbone.d_output
    x, cond = torch.randn(n, T), torch.randn(n, d_out)
    t = torch.randint(0, config.diffusion.num_timesteps, (n,))

    def denoiser() -> None:
        model.denoiser(x, t, cond).square().mean().backward()

    flops = train["flops_per_step"]
    backbone_s = passes * _timed(backbone, repeats)
    denoiser_s = _timed(denoiser, repeats)
    return {
        "threads": torch.get_num_threads(),
        "backbone_s": backbone_s,
        "denoiser_s": denoiser_s,
        "backbone_flops_per_s": flops["backbone"] / backbone_s,
        "denoiser_flops_per_s": flops["denoiser"] / denoiser_s,
    }


# Runs `rpg train` as a child and prints its peak RSS (KiB), so the figure is that run alone.
_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure_run(zoo: Path, plan: dict[str, Any], steps: int, out: Path) -> dict[str, float]:
    """Seconds per step (from the run's own timer) and peak RSS of ``rpg train``."""
    cmd = [sys.executable, "-m", "service.cli", "train", str(zoo), "--out", str(out)]
    cmd += ["--preset", plan["preset"], "--denoiser", plan["denoiser"]]
    cmd += ["--steps", str(steps), "--save-every", "0"]
    cmd += ["--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *cmd], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    state = json.loads((out / "config.json").read_text())["training"]
    return {
        "steps": steps,
        "seconds_per_step": state["seconds"] / steps if state.get("seconds") else wall / steps,
        "wall_s": wall,
        "peak_bytes": int(done.stdout.split()[-1]) * 1024,
    }


def _cmd(args: argparse.Namespace) -> int:
    from models.cli.plan import make_plan

    plan = make_plan(args.zoo, preset=args.preset, denoiser=args.denoiser)
    report: dict[str, Any] = {
        "zoo": str(args.zoo),
        "preset": plan["preset"],
        "predicted": {
            "step_seconds": plan["train"]["step_seconds"],
            "peak_bytes": plan["train"]["peak_bytes"],
            "flops_per_step": plan["train"]["flops_per_step"],
        },
        "parts": measure_parts(plan),
    }
    if args.steps:
        with tempfile.TemporaryDirectory() as tmp:
            run = measure_run(args.zoo, plan, args.steps, Path(tmp) / "g")
        report["run"] = run
        report["ratio"] = {
            "step_seconds": plan["train"]["step_seconds"] / run["seconds_per_step"],
            "peak_bytes": plan["train"]["peak_bytes"] / run["peak_bytes"],
        }
    report["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def register_step_time(sub: Any) -> None:
    """Add `bench step-time` to the `bench` subcommands."""
    p = sub.add_parser(
        "step-time",
        help="the plan's predicted step time and peak memory beside measured ones",
        description="Time a training step's backbone and denoiser parts (the throughputs "
        "rpg plan is calibrated from) and, with --steps, a real `rpg train` run with the "
        "plan's settings; prints predicted, measured and their ratio.",
    )
    p.add_argument("zoo", type=Path, help="zoo directory")
    p.add_argument("--preset", help="default: the one rpg plan picks")
    p.add_argument("--denoiser", choices=["unet", "mlp"], help="default: the preset's")
    p.add_argument("--steps", type=int, default=0, help="also run rpg train for N steps")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.set_defaults(func=_cmd)
