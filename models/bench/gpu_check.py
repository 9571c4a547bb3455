"""A GPU acceptance check: `python -m models.bench.gpu_check [--device cuda]` (docker/gpu_check.sh).

On one machine, in a few minutes, it:

1. builds a small digits-mlp zoo (CPU: the zoo recipe is single-threaded by design);
2. trains a generator on `--device` for a few hundred steps (bf16 autocast on CUDA);
3. samples on `--device` in float32 and bfloat16 (`Generator.sample`), timing both and
   scoring the generated models on the digits test split;
4. compares the device against the CPU: the same bundle, loaded on both, denoises the *same*
   initial noise with DDIM (eta = 0, so nothing else is random) in strict float32 (TF32 off),
   and the decoded weights (`--weight-tol`, relative to the largest weight) and the
   accuracies of the resulting models (`--acc-tol`) must agree. Same-seed `Generator.sample`
   calls cannot be compared across devices: CUDA and CPU random streams differ, so the noise
   is drawn once on the CPU here.

Progress goes to stdout as plain lines; the last line is a JSON summary. Exit status: 0 when the
comparison passes, 1 when it does not, 2 when the device cannot be used. `--device cpu` runs the
whole check on a CPU-only machine (then it compares CPU with CPU; tests use it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.generator import Generator
from models.training import TrainConfig, pick_device, train
from models.zoo import digits
from models.zoo.build import build_digits_zoo
from models.zoo.store import build_module, load_zoo

__all__ = ["compare_weights", "main", "run_check", "sample_from_noise"]

# Why these defaults: the weight tolerance is relative to the largest decoded weight (at
# least 1), so it means the same for a well and a poorly trained generator. Measured on a CPU
# (tiny preset, 50 DDIM steps): perturbing the noise by 1e-7 relative (fp32 rounding) moves
# decoded weights by ~6e-7 of the largest one, by 1e-6 relative ~2e-6, by 1e-5 ~2e-5; CUDA
# against CPU kernels differ by rounding, so 1e-4 leaves a wide margin, while a real device
# bug (wrong kernel, broken scan) moves weights by O(1) of their scale and accuracy by tens of
# points. One flipped prediction out of the 540 test digits is 0.0019 accuracy.
DEFAULT_WEIGHT_TOL = 1e-4
DEFAULT_ACC_TOL = 0.01


def _log(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Disable TF32 in matmuls and cuDNN convolutions (restored afterwards).

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs (10-bit
    mantissa), which is not what "compare float32 on both devices" means.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sample_from_noise(
    generator: Generator, noise: Tensor, permutation_ids: Tensor, *, steps: int
) -> list[dict[str, Tensor]]:
    """Deterministic DDIM (eta = 0) from the given (B, L, T) noise, in float32.

    The noise and permutation ids may live anywhere; they are moved to the generator's device.
    """
    device = generator.device
    generator.model.eval()
    tokens = generator.model.sample_tokens(
        noise.to(device),
        permutation_ids.to(device),
        None,
        sampler="ddim",
        steps=steps,
        eta=0.0,
        autocast_dtype=torch.float32,
    )  # (B, L, T)
    return [generator.tokenizer.decode(row.cpu()) for row in tokens]


def _accuracies(spec: dict[str, Any], samples: Sequence[dict[str, Tensor]]) -> list[float]:
    """Test-split accuracy of each generated digits model (on the CPU)."""
    split = digits.load_digits_split()
    module = build_module(spec)
    scores = []
    for state in samples:
        module.load_state_dict(state, strict=True)
        scores.append(digits.accuracy(module, split.x_test, split.y_test))
    return scores


def compare_weights(
    reference: Sequence[dict[str, Tensor]],
    candidate: Sequence[dict[str, Tensor]],
    reference_acc: Sequence[float],
    candidate_acc: Sequence[float],
    *,
    weight_tol: float,
    acc_tol: float,
) -> dict[str, Any]:
    """How far two sets of generated models are apart, and whether that is within tolerance.

    Passes when the largest absolute difference of any weight is at most
    `weight_tol * max(1, largest |weight| of the reference)` and the largest per-model accuracy
    difference is at most `acc_tol`. NaN anywhere fails.
    """
    if len(reference) != len(candidate) or len(reference_acc) != len(candidate_acc):
        raise ValueError("compare the same number of models on both sides")
    max_diff = 0.0
    max_weight = 0.0
    finite = True
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.keys() != cand.keys():
            raise ValueError(f"state dict keys differ: {sorted(ref.keys() ^ cand.keys())}")
        for key, ref_value in ref.items():
            a = ref_value.double()
            b = cand[key].double()
            finite = finite and bool(torch.isfinite(a).all() and torch.isfinite(b).all())
            if a.numel():
                max_diff = max(max_diff, float((a - b).abs().max()))
                max_weight = max(max_weight, float(a.abs().max()))
    acc_diffs = [abs(a - b) for a, b in zip(reference_acc, candidate_acc, strict=True)]
    max_acc_diff = max(acc_diffs, default=0.0)
    allowed = weight_tol * max(1.0, max_weight)
    return {
        "max_abs_weight_diff": max_diff,
        "max_abs_weight": max_weight,
        "max_accuracy_diff": max_acc_diff,
        "weight_tol": weight_tol,
        "acc_tol": acc_tol,
        "finite": finite,
        "allowed_weight_diff": allowed,
        "passed": finite and max_diff <= allowed and max_acc_diff <= acc_tol,
    }


def _timed_sample(
    generator: Generator, args: argparse.Namespace, dtype: str
) -> tuple[list[dict[str, Tensor]], float]:
    started = time.perf_counter()
    samples = generator.sample(
        args.samples, seed=args.seed, sampler="ddim", steps=args.sample_steps, dtype=dtype
    )  # the tensors come back on the CPU, so the device has finished here
    return samples, time.perf_counter() - started


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_check(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the whole check in `workdir`; returns the JSON summary (see the module docstring)."""
    device = pick_device(args.device)
    summary: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    started = time.perf_counter()

    recipe = digits.TrainingRecipe()
    if args.zoo_epochs is not None:
        recipe = replace(recipe, epochs=args.zoo_epochs)
    t0 = time.perf_counter()
    zoo_dir = workdir / "zoo"
    build_digits_zoo(
        "digits-mlp",
        zoo_dir,
        num_checkpoints=args.zoo_checkpoints,
        runs=args.zoo_runs,
        seed=args.seed,
        progress=False,
        overwrite=True,
        recipe=recipe,
    )
    zoo = load_zoo(zoo_dir)
    zoo_acc = [a for a in zoo.accuracies() if a is not None]
    summary["zoo"] = {
        "checkpoints": len(zoo),
        "seconds": round(time.perf_counter() - t0, 3),
        "mean_accuracy": _mean(zoo_acc),
    }
    _log(f"zoo: {len(zoo)} digits-mlp checkpoints, mean accuracy {_mean(zoo_acc):.4f}")

    options = TrainConfig(
        backbone=args.backbone,
        steps=args.train_steps,
        seed=args.seed,
        device=str(device),
        save_every=0,
        progress=False,
        name="digits-mlp",
        d_model=args.d_model,
        d_state=args.d_state,
        token_size=args.token_size,
        channels=tuple(args.channels) if args.channels else None,
        denoiser="unet",  # it samples with DDIM (an epsilon sampler)
    )
    result = train(zoo_dir, workdir / "bundle", options)
    summary["train"] = {
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "steps_per_s": round(result.steps_per_second, 2),
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
    }
    _log(
        f"train on {device}: {result.steps} steps in {result.seconds:.1f} s "
        f"({result.steps_per_second:.1f} steps/s), loss {result.first_loss:.4f} -> "
        f"{result.final_loss:.4f}"
    )

    on_device = Generator.from_pretrained(workdir / "bundle", device=device)
    on_cpu = Generator.from_pretrained(workdir / "bundle", device="cpu")
    spec = on_device.architecture
    num_params = on_device.num_parameters
    t0 = time.perf_counter()
    on_device.sample(1, seed=args.seed, steps=2)  # CUDA context, kernel selection
    sampling: dict[str, Any] = {"warmup_s": round(time.perf_counter() - t0, 3)}
    sets: dict[str, list[float]] = {}
    for dtype in ("float32", "bfloat16"):
        samples, seconds = _timed_sample(on_device, args, dtype)
        sets[dtype] = _accuracies(spec, samples)
        sampling[dtype] = {
            "seconds": round(seconds, 4),
            "models_per_s": round(args.samples / seconds, 3),
            "params_per_s": round(args.samples * num_params / seconds, 1),
            "mean_accuracy": _mean(sets[dtype]),
        }
        _log(
            f"sample {dtype} on {device}: {args.samples} models x {num_params} parameters, "
            f"{args.sample_steps} DDIM steps in {seconds:.3f} s "
            f"({args.samples * num_params / seconds:,.0f} parameters/s), "
            f"mean accuracy {_mean(sets[dtype]):.4f}"
        )
    sampling["bf16_minus_fp32_mean_accuracy"] = _mean(sets["bfloat16"]) - _mean(sets["float32"])
    sampling["num_parameters"] = num_params
    summary["sampling"] = sampling

    # Cross-device: the same noise and permutation ids, drawn once on the CPU.
    rng = torch.Generator().manual_seed(args.seed)
    shape = (args.samples, on_cpu.tokenizer.num_tokens, on_cpu.tokenizer.token_size)
    noise = torch.randn(shape, generator=rng)  # (B, L, T)
    states = on_cpu.model.config.num_permutation_states
    ids = torch.randint(0, states, (args.samples,), generator=rng)  # (B,)
    with strict_float32():
        reference = sample_from_noise(on_cpu, noise, ids, steps=args.sample_steps)
        candidate = sample_from_noise(on_device, noise, ids, steps=args.sample_steps)
    ref_acc, cand_acc = _accuracies(spec, reference), _accuracies(spec, candidate)
    comparison = compare_weights(
        reference,
        candidate,
        ref_acc,
        cand_acc,
        weight_tol=args.weight_tol,
        acc_tol=args.acc_tol,
    )
    comparison["reference"] = "cpu"
    if device.type == "cuda":
        # For information: the worker's default precision (cuDNN may use TF32).
        default = sample_from_noise(on_device, noise, ids, steps=args.sample_steps)
        info = compare_weights(
            reference,
            default,
            ref_acc,
            _accuracies(spec, default),
            weight_tol=args.weight_tol,
            acc_tol=args.acc_tol,
        )
        comparison["default_precision"] = {
            k: info[k] for k in ("max_abs_weight_diff", "max_accuracy_diff")
        }
    summary["cross_device"] = comparison
    _log(
        f"{device} vs cpu, float32 from the same noise: max |weight diff| "
        f"{comparison['max_abs_weight_diff']:.3g} (allowed {comparison['allowed_weight_diff']:.3g}"
        f" = {args.weight_tol:g} x max(1, max |weight| {comparison['max_abs_weight']:.3g})), "
        f"max accuracy diff "
        f"{comparison['max_accuracy_diff']:.4f} (tol {args.acc_tol:g}): "
        f"{'PASS' if comparison['passed'] else 'FAIL'}"
    )
    summary["total_seconds"] = round(time.perf_counter() - started, 3)
    summary["ok"] = bool(comparison["passed"])
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m models.bench.gpu_check`."""
    p = argparse.ArgumentParser(
        prog="python -m models.bench.gpu_check",
        description="Train and sample a tiny RPG generator on a device, time it, and check "
        "that the device's float32 samples match the CPU's. Last output line: JSON summary.",
    )
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--workdir", type=Path, help="keep the zoo and bundle here (default: temp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoo-checkpoints", type=int, default=20)
    p.add_argument("--zoo-runs", type=int, default=2)
    p.add_argument("--zoo-epochs", type=int, help="epochs per zoo run (default: the recipe's)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--backbone", default="mamba", choices=["mamba", "lstm", "transformer", "gmlp"])
    p.add_argument("--d-model", type=int, help="override the preset (small, fast runs)")
    p.add_argument("--d-state", type=int, help="override the preset")
    p.add_argument("--token-size", type=int, help="override the preset")
    p.add_argument("--channels", type=int, nargs="+", help="denoiser channels, e.g. 1 8 16 8 1")
    p.add_argument("--samples", type=int, default=8, help="models generated per measurement")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument(
        "--weight-tol",
        type=float,
        default=DEFAULT_WEIGHT_TOL,
        help="max |weight diff| / max(1, max |weight|) allowed between device and CPU "
        f"(default {DEFAULT_WEIGHT_TOL:g})",
    )
    p.add_argument(
        "--acc-tol",
        type=float,
        default=DEFAULT_ACC_TOL,
        help=f"max accuracy difference of one model, device vs CPU (default {DEFAULT_ACC_TOL:g})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 = passed, 1 = device and CPU disagree, 2 = the device is unusable."""
    args = build_parser().parse_args(argv)
    try:
        pick_device(args.device)
    except (ValueError, RuntimeError) as exc:
        print(
            f"gpu_check: {exc} (run with --device cpu on a machine without CUDA)", file=sys.stderr
        )
        return 2
    if args.samples < 1 or args.sample_steps < 1 or args.train_steps < 1:
        print(
            "gpu_check: --samples, --sample-steps and --train-steps must be >= 1", file=sys.stderr
        )
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        summary = run_check(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="rpg-gpu-check-") as tmp:
            summary = run_check(args, Path(tmp))
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
