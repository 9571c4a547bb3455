"""``rpg evaluate``: accuracy and novelty of a folder of generated models against their zoo,
or (``--generator``, task-conditioned zoos) per-task accuracy of a generator on seen and
held-out tasks.

The top-level ``rpg`` command calls ``register(subparsers)``; the subcommand's ``func`` takes
the parsed namespace and returns the exit code. ``format_report`` (the table) lives here, next
to the only place that prints it; other callers may import it too.
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
from models.diffusion.samplers import SAMPLERS
from models.errors import UnsafeFileError
from models.evaluation import (
    NOISE_SIGMAS,
    EvaluationError,
    evaluate_generated,
    load_generated_dir,
    noise_set_name,
)
from models.zoo.architecture import add_trust_argument, command_trust
from models.zoo.store import ZooError, load_zoo

__all__ = ["format_report", "format_task_report", "register"]

EXIT_ERROR = 1


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _stats_cells(stats: dict[str, Any] | None, digits: int = 4) -> str:
    if stats is None:
        return "  ".join(f"{'-':>7}" for _ in range(4))
    return "  ".join(f"{_num(stats[k], digits):>7}" for k in ("mean", "median", "min", "max"))


def _baseline_label(key: str, s: dict[str, Any]) -> str:
    if key == "noise":
        return f"noise, sigma {s['sigma']:.3g}"  # matched to the generated mean accuracy
    if key == "gaussian":
        return "per-value Gaussian"
    return _average_label(key, s)


def _average_label(key: str, s: dict[str, Any]) -> str:
    """``average of 8``, or ``average of 8 (5 used)`` when the zoo had fewer checkpoints."""
    asked = int(key.removeprefix("average_"))
    return f"average of {asked}" + ("" if s["k"] == asked else f" ({s['k']} used)")


def _set_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, novelty set) in table order: zoo, noise rows, generated, baselines."""
    sets = report["novelty"]
    rows = [("zoo (leave-one-out)", sets["zoo_loo"])]
    rows += [
        (f"zoo + noise {s:g}", sets[noise_set_name(s)]) for s in report["settings"]["noise_sigmas"]
    ]
    rows.append(("generated", sets["generated"]))
    for key, s in (report.get("baselines") or {}).items():
        if s is not None:
            rows.append((f"baseline: {_baseline_label(key, s)}", s))
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of an ``evaluate_generated`` report (accuracy, then novelty)."""
    header = f"{'mean':>7}  {'median':>7}  {'min':>7}  {'max':>7}"
    lines = [
        f"zoo:        {report.get('zoo_path', '?')} ({report.get('architecture') or 'architecture unknown'}, "
        f"{len(report['zoo_files'])} checkpoints)",
        f"generated:  {len(report['per_model'])} model(s)",
        f"test set:   {(report.get('dataset') or {}).get('name', 'none')}"
        + (f" ({report['num_test']} examples)" if report["num_test"] else ""),
        *[f"note:       {n}" for n in report["notes"]],
        "",
        f"{'accuracy':<30}{'n':>4}  {header}",
    ]
    for label, s in _set_rows(report):
        stats = s["summary"]["accuracy"]
        n = s["n"] if stats is None else stats["n"]
        lines.append(f"{label:<30}{n:>4}  {_stats_cells(stats)}")
    if report.get("base") is not None:  # adapter zoos: the base network with no adapter
        lines.append(
            f"{'base alone (no adapter)':<30}{1:>4}  {_num(report['base']['accuracy']):>7}"
        )
    lines += [
        "",
        "novelty: max IoU of wrong-prediction sets with the zoo (1 = the same mistakes), and",
        "min L2 distance to the zoo in normalized parameter space (0 = a copy)",
        f"{'':<30}{'n':>4}  {'IoU':>7}  {'':>7}  {'':>7}  {'':>7}    {'L2':>7}",
        f"{'set':<30}{'':>4}  {header}    {header}",
    ]
    for label, s in _set_rows(report):
        lines.append(
            f"{label:<30}{s['n']:>4}  {_stats_cells(s['summary']['max_iou'])}    "
            f"{_stats_cells(s['summary']['min_l2'], 3)}"
        )
    lines += ["", "per generated model:"]
    width = max(len(m["name"]) for m in report["per_model"])
    lines.append(
        f"{'name':<{width}}  {'accuracy':>8}  {'max IoU':>7}  {'nearest (IoU)':<20}  "
        f"{'min L2':>8}  nearest (L2)"
    )
    for m in report["per_model"]:
        lines.append(
            f"{m['name']:<{width}}  {_num(m['accuracy']):>8}  {_num(m['max_iou']):>7}  "
            f"{m['nearest_by_iou_file'] or '-':<20}  {_num(m['min_l2'], 3):>8}  "
            f"{m['nearest_by_l2_file'] or '-'}"
        )
    return "\n".join(lines)


def format_task_report(report: dict[str, Any]) -> str:
    """The human-readable table of an ``evaluate_tasks`` report (one row per task set)."""
    s = report["settings"]
    lines = [
        f"zoo:        {report['zoo_path']} ({report['architecture']}, "
        f"{report['num_training_tasks']} training tasks)",
        f"generator:  {report['generator']}  ({s['samples_per_task']} samples per task, "
        f"{s['sampler']} {s['steps']} steps"
        + (f" eta {s['eta']:g}" if s.get("eta") and s["sampler"] == "ddim" else "")
        + f", seed {s['seed']})",
        f"test set:   each task's binary labels on {report['num_test']} digits test images",
        "",
        "accuracy (fractions)   tasks   generated: mean  median     min   bal.   "
        "trained: mean     min   bal.   majority  nearest",
    ]
    for kind, label in (("heldout", "held-out (unseen)"), ("seen", "seen (training)")):
        t = report["tasks"][kind]
        lines.append(
            f"{label:<22} {t['n_tasks']:>5}   {'':>9}{_num(t['generated_mean']):>6}  "
            f"{_num(t['generated_median']):>6}  {_num(t['generated_min']):>6} "
            f"{_num(t['generated_balanced_mean']):>6}   {'':>7}{_num(t['trained_mean']):>6}  "
            f"{_num(t['trained_min']):>6} {_num(t['trained_balanced_mean']):>6}   "
            f"{_num(t['majority_baseline_mean']):>8}  {_num(t['nearest_task_mean']):>7}"
        )
    lines += [
        "",
        "bal. = balanced accuracy (mean per-class recall); majority = always predicting the "
        "task's majority class;",
        "nearest = trained models of the closest seen task(s) by Hamming distance.",
        "",
        "per held-out task:",
        f"{'mask (class 0..9)':<18}  {'pos':>5}  {'gen mean':>8}  {'gen min':>7}  "
        f"{'trained':>7}  {'majority':>8}  {'nearest':>7}",
    ]
    for e in report["tasks"]["heldout"]["per_task"]:
        lines.append(
            f"{e['task']:<18}  {e['positive_fraction']:>5.2f}  {_num(e['generated']['mean']):>8}  "
            f"{_num(e['generated']['min']):>7}  {_num(e['trained']['mean']):>7}  "
            f"{_num(e['majority_baseline']):>8}  {_num(e['nearest_task']['mean']):>7}"
        )
    swapped = report["tasks"]["heldout"].get("with_trained_tensor_mean")
    if swapped:
        seen = report["tasks"]["seen"].get("with_trained_tensor_mean") or {}
        lines += [
            "",
            "generated, with one tensor taken from the task's trained model (the tensor that "
            "recovers most is what the generator gets wrong):",
            f"{'tensor':<28}  {'held-out':>8}  {'seen':>6}",
        ]
        for name, value in swapped.items():
            lines.append(f"{name:<28}  {_num(value):>8}  {_num(seen.get(name)):>6}")
    if report.get("baselines"):
        lines += ["", *_task_baseline_rows(report["baselines"])]
    directions = report["tasks"]["heldout"].get("task_direction_mean")
    if directions:
        seen_dirs = report["tasks"]["seen"].get("task_direction_mean") or {}
        lines += [
            "",
            "how much of each tensor's task-specific part (trained minus the zoo average) the "
            "generated tensors reproduce (1 = all, 0 = none):",
            f"{'tensor':<28}  {'held-out slope':>14}  {'cosine':>6}  {'seen slope':>10}  {'cosine':>6}",
        ]
        for name, d in directions.items():
            other = seen_dirs.get(name) or {}
            lines.append(
                f"{name:<28}  {_num(d['slope']):>14}  {_num(d['cosine']):>6}  "
                f"{_num(other.get('slope')):>10}  {_num(other.get('cosine')):>6}"
            )
    return "\n".join(lines)


def _task_baseline_rows(baselines: dict[str, Any]) -> list[str]:
    """Generated models beside the Zeng et al. baselines, pooled over each kind's tasks."""
    lines = [
        "baselines (Zeng et al. 2025), per task from that task's own trained checkpoints "
        "(held-out: models the generator never saw); noise sigma: geometric mean over tasks",
        f"{'set':<34}  {'models':>6}  {'acc mean':>8}  {'acc min':>7}  {'max IoU':>7}  "
        f"{'min L2':>7}",
    ]
    for kind, title in (("heldout", "held-out"), ("seen", "seen")):
        sets = baselines.get(kind)
        if not sets:
            continue
        for key, s in sets.items():
            if key == "noise":
                label = f"noise, sigma {_num(s['sigma_mean_log'], 3)}"
            else:
                named = {"generated": "generated", "gaussian": "per-value Gaussian"}
                label = named[key] if key in named else _average_label(key, s)
            acc, iou, l2 = (s["summary"][f] or {} for f in ("accuracy", "max_iou", "min_l2"))
            lines.append(
                f"{title + ': ' + label:<34}  {s['n']:>6}  {_num(acc.get('mean')):>8}  "
                f"{_num(acc.get('min')):>7}  {_num(iou.get('mean')):>7}  "
                f"{_num(l2.get('mean'), 2):>7}"
            )
    return lines


def format_adapter_task_report(report: dict[str, Any]) -> str:
    """The table of an ``evaluate_adapter_tasks`` report: one row per task set, one column per
    method (mean accuracy over tasks, with the std over tasks under it)."""
    from models.evaluation.adapter_tasks import METHODS

    s = report["settings"]
    lines = [
        f"zoo:        {report['zoo_path']} ({report['architecture']} LoRA adapters, "
        f"{report['num_training_tasks']} training tasks)",
        f"generator:  {report['generator']}  ({s['samples_per_task']} samples per task, "
        f"{s['sampler']} {s['steps']} steps, seed {s['seed']})",
        f"test set:   each task's transform of the {report['num_test']} digits test images",
        "",
        f"{'accuracy':<20} {'tasks':>5}  "
        + "  ".join(f"{m:>12}" for m in METHODS)
        + "  gap closed",
    ]
    for kind, label in (("heldout", "held-out (unseen)"), ("seen", "seen (training)")):
        t = report["tasks"][kind]
        lines.append(
            f"{label:<20} {t['n_tasks']:>5}  "
            + "  ".join(f"{_num(t[m + '_mean']):>12}" for m in METHODS)
            + f"  {_num(t['gap_closed'], 3):>10}"
        )
        lines.append(
            f"{'  std over tasks':<20} {'':>5}  "
            + "  ".join(f"{_num(t[m + '_std']):>12}" for m in METHODS)
        )
    lines += [
        "",
        "base = no adapter; trained = the task's own adapters; multitask = one adapter for all "
        "seen tasks; nearest_seen = adapters of the seen task(s) with the nearest embedding;",
        "regressor = an MLP from embedding to weights; mismatched = generated for another "
        "task's embedding. gap closed = (generated - base) / (trained - base).",
    ]
    return "\n".join(lines)


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
                sampler=args.sampler,
                steps=args.steps,
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
                sampler=args.sampler,
                steps=args.steps,
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
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="--generator")
    p.add_argument("--steps", type=int, default=50, help="--generator: DDIM steps (default: 50)")
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
