"""``rpg zoo``: build the built-in zoos, import a folder of checkpoints, summarise a zoo.

The top-level ``rpg`` command calls ``register(subparsers)``; each subcommand sets ``func``,
which takes the parsed namespace and returns the process exit code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from models.cli import command_limits
from models.zoo import digits
from models.zoo.build import ZOO_KINDS, build_digits_zoo, import_zoo
from models.zoo.lora_tasks import LORA_TASK_ZOO_NAME
from models.zoo.store import Zoo, ZooError, load_zoo
from models.zoo.tasks import NUM_TASKS, TASK_ZOO_NAME, build_task_zoo

__all__ = ["register", "summarize"]

EXIT_ERROR = 1


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR


def summarize(zoo: Zoo) -> dict[str, Any]:
    """JSON-safe summary of a zoo: architecture, size, runs, accuracy statistics."""
    # Sizes come from one checkpoint: load_zoo already checked that all have the same shapes.
    first = zoo.read(zoo.files()[0])
    accs = [a for a in zoo.accuracies() if a is not None]
    stats: dict[str, Any] | None = None
    if accs:
        stats = {
            "n": len(accs),
            "mean": statistics.fmean(accs),
            "median": statistics.median(accs),
            "min": min(accs),
            "max": max(accs),
        }
    return {
        "path": str(zoo.path),
        "architecture": zoo.architecture,
        "dataset": zoo.dataset,
        "condition": zoo.condition,
        "num_checkpoints": len(zoo),
        "num_heldout": len(zoo.heldout_checkpoints()),
        "num_runs": len(set(zoo.run_ids())),
        "num_tensors": len(first),
        "num_values": sum(t.numel() for t in first.values()),
        "accuracy": stats,
        "adapter": zoo.adapter,
    }


_TASK_OPTIONS = {"tasks": "--tasks", "per_task": "--per-task", "holdout": "--holdout"}
_RUN_OPTIONS = {"num_checkpoints": "--num-checkpoints", "runs": "--runs"}


def _cmd_build_lora(args: argparse.Namespace) -> int:
    from models.zoo.lora_zoo import build_lora_task_zoo

    given = [flag for dest, flag in _RUN_OPTIONS.items() if getattr(args, dest) is not None]
    if args.tasks is not None:
        given.append("--tasks")
    if given:
        return _fail(ValueError(f"{', '.join(given)} does not apply to {LORA_TASK_ZOO_NAME}"))
    try:
        zoo = build_lora_task_zoo(
            args.out,
            per_task=4 if args.per_task is None else args.per_task,
            holdout=8 if args.holdout is None else args.holdout,
            seed=args.seed,
            form=args.lora_form,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except (ZooError, ValueError) as e:
        return _fail(e)
    _print_summary(summarize(zoo))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    if args.kind == LORA_TASK_ZOO_NAME:
        return _cmd_build_lora(args)
    if args.lora_form != "canonical":
        return _fail(ValueError(f"--lora-form only applies to {LORA_TASK_ZOO_NAME}"))
    is_tasks = args.kind == TASK_ZOO_NAME
    # Options of the other kind of zoo would be silently ignored: refuse them instead.
    foreign = _RUN_OPTIONS if is_tasks else _TASK_OPTIONS
    given = [flag for dest, flag in foreign.items() if getattr(args, dest) is not None]
    if given:
        other = "the unconditional zoos" if is_tasks else TASK_ZOO_NAME
        return _fail(ValueError(f"{', '.join(given)} only applies to {other}, not {args.kind}"))
    try:
        if is_tasks:
            zoo = build_task_zoo(
                args.out,
                num_tasks=NUM_TASKS if args.tasks is None else args.tasks,
                per_task=5 if args.per_task is None else args.per_task,
                holdout=20 if args.holdout is None else args.holdout,
                seed=args.seed,
                progress=not args.quiet,
                overwrite=args.overwrite,
            )
        else:
            zoo = build_digits_zoo(
                args.kind,
                args.out,
                num_checkpoints=50 if args.num_checkpoints is None else args.num_checkpoints,
                runs=1 if args.runs is None else args.runs,
                seed=args.seed,
                progress=not args.quiet,
                overwrite=args.overwrite,
            )
    except (ZooError, ValueError) as e:
        return _fail(e)
    _print_summary(summarize(zoo))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as e:
        return _fail(ValueError(f"--kwargs is not valid JSON ({e}); e.g. '{{\"hidden\": 64}}'"))
    if not isinstance(kwargs, dict):
        return _fail(ValueError(f"--kwargs must be a JSON object, got {args.kwargs!r}"))
    evaluate = dataset = None
    if args.evaluate == "digits":
        split = digits.load_digits_split()
        evaluate = partial(_digits_accuracy, split=split)
        dataset = digits.dataset_spec(split)
    from models.adapters.zoo_import import adapter_folders, import_adapter_zoo

    has_adapters = bool(adapter_folders(Path(args.src)))
    if has_adapters != (args.base_weights is not None):
        return _fail(
            ValueError(
                f"{args.src} holds PEFT adapter folders: pass their base network's weights with "
                "--base-weights BASE.safetensors"
                if has_adapters
                else "--base-weights is for a folder of PEFT adapter folders (subfolders with "
                f"adapter_config.json); {args.src} holds none"
            )
        )
    try:
        if has_adapters:
            zoo = import_adapter_zoo(
                args.src,
                args.out,
                args.architecture,
                kwargs,
                args.base_weights,
                name=args.name,
                form=args.lora_form,
                evaluate=evaluate,
                dataset=dataset,
                overwrite=args.overwrite,
            )
            _print_summary(summarize(zoo))
            return 0
        zoo = import_zoo(
            args.src,
            args.out,
            args.architecture,
            kwargs,
            name=args.name,
            evaluate=evaluate,
            dataset=dataset,
            overwrite=args.overwrite,
        )
    except ZooError as e:
        return _fail(e)
    _print_summary(summarize(zoo))
    return 0


def _digits_accuracy(module: nn.Module, *, split: digits.DigitsSplit) -> float:
    return digits.accuracy(module, split.x_test, split.y_test)


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        summary = summarize(load_zoo(args.dir, limits=command_limits()))
    except (ZooError, ValueError) as e:
        return _fail(e)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    arch = s["architecture"]
    arch_text = (
        "unknown (bare folder: import it with `rpg zoo import` to name it)"
        if arch is None
        else f"{arch.get('name')} ({arch['builder']}, kwargs {json.dumps(arch.get('kwargs', {}))})"
    )
    dataset = s["dataset"]["name"] if s["dataset"] else "unknown"
    lines = [
        f"zoo:          {s['path']}",
        f"architecture: {arch_text}",
        f"dataset:      {dataset}",
        f"condition:    {s['condition'].get('kind')}",
        f"checkpoints:  {s['num_checkpoints']} from {s['num_runs']} run(s)"
        + (f", {s['num_heldout']} held out from training" if s.get("num_heldout") else ""),
        f"size:         {s['num_values']:,} values in {s['num_tensors']} tensors",
    ]
    adapter = s.get("adapter")
    if adapter:
        cfg, base = adapter["peft_config"], adapter["base"]
        lines.append(
            f"adapters:     LoRA r={cfg['r']} alpha={cfg['lora_alpha']:g} on "
            f"{cfg['target_modules']} ({adapter['form']} form); base weights {base['weights']} "
            f"(sha256 {base['sha256'][:12]}...)"
        )
    acc = s["accuracy"]
    if acc is None:
        lines.append("accuracy:     not recorded")
    else:
        lines.append(
            f"accuracy:     mean {acc['mean']:.4f}  median {acc['median']:.4f}  "
            f"min {acc['min']:.4f}  max {acc['max']:.4f}  (n={acc['n']})"
        )
    print("\n".join(lines))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``zoo`` (with ``build``, ``import``, ``show``) to a parser's subcommands."""
    zoo = subparsers.add_parser(
        "zoo",
        help="build, import and inspect model zoos (the training data of generators)",
        description="A model zoo is a folder of .safetensors checkpoints of one architecture "
        "plus zoo.json (architecture spec, dataset, per-checkpoint accuracy and run id).",
    )
    sub = zoo.add_subparsers(dest="zoo_command", metavar="{build,import,show}", required=True)

    build = sub.add_parser(
        "build",
        help="train a built-in zoo on scikit-learn's digits (no download)",
        description="Train a built-in zoo: each run trains to a plateau, then saves checkpoints "
        "evenly through one extra epoch at a small learning rate. Deterministic for a seed. "
        f"{TASK_ZOO_NAME}: binary tasks by 10-bit class mask (the task embedding), one small "
        "MLP per task fine-tuned from one shared 10-class base; a seeded set of tasks is held "
        "out from generator training and kept for evaluation (about 5 minutes on 2 CPU cores "
        f"with the defaults). {LORA_TASK_ZOO_NAME}: one digits base network and rank-4 LoRA "
        "adapters, 4 per task, for 35 tasks (an input transform crossed with a label shift; the "
        "task embedding encodes both), 8 held out.",
    )
    build.add_argument("kind", choices=ZOO_KINDS, help="which zoo to build")
    build.add_argument("--out", required=True, help="output directory (created)")
    build.add_argument(
        "--num-checkpoints", type=int, help="checkpoints in total (default: 50; not for tasks)"
    )
    build.add_argument(
        "--runs",
        type=int,
        help="independent training runs; checkpoints are split evenly over them (default: 1; "
        "not for tasks)",
    )
    build.add_argument(
        "--tasks",
        type=int,
        help=f"{TASK_ZOO_NAME}: number of tasks, held-out ones included "
        f"(default: all {NUM_TASKS} masks)",
    )
    build.add_argument(
        "--per-task",
        type=int,
        help=f"{TASK_ZOO_NAME}: checkpoints per task (default: 5); {LORA_TASK_ZOO_NAME}: "
        "independently seeded adapters per task (default: 4)",
    )
    build.add_argument(
        "--holdout",
        type=int,
        help="task zoos: tasks held out from generator training, fixed by --seed "
        f"(default: 20 for {TASK_ZOO_NAME}, 8 for {LORA_TASK_ZOO_NAME})",
    )
    build.add_argument(
        "--lora-form",
        choices=("canonical", "raw"),
        default="canonical",
        help=f"{LORA_TASK_ZOO_NAME}: store adapters in canonical form (default) or as trained",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the whole zoo (default: 0)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing zoo in --out")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_build)

    imp = sub.add_parser(
        "import",
        help="make a zoo from a folder of state dicts (.safetensors, .pt, .pth)",
        description="Copy a folder of state dicts of one architecture into a zoo. .pt/.pth files "
        "are read with torch.load(weights_only=True) (a state dict, or a dict with a "
        "'state_dict' key) and converted to safetensors. Every file must load into the "
        "architecture with strict=True.",
    )
    imp.add_argument("src", help="folder holding the checkpoint files")
    imp.add_argument("--out", required=True, help="output zoo directory (created)")
    imp.add_argument(
        "--architecture",
        required=True,
        metavar="MODULE:FUNCTION",
        help="builder that returns a fresh nn.Module, e.g. models.zoo.digits:mlp; typing it "
        "here trusts it for this import only: later commands on the zoo (rpg evaluate) need "
        "--trust-builder MODULE unless it is one of the project's builders",
    )
    imp.add_argument(
        "--kwargs", default="{}", metavar="JSON", help="builder keyword arguments as JSON"
    )
    imp.add_argument("--name", help="architecture name (default: the --out folder's name)")
    imp.add_argument(
        "--evaluate",
        choices=("none", "digits"),
        default="none",
        help="record each checkpoint's accuracy on a dataset (digits: the fixed test split of "
        "the built-in zoos; the model must map (N, 64) inputs to class logits)",
    )
    imp.add_argument(
        "--base-weights",
        metavar="BASE.safetensors",
        help="adapter zoos: SRC holds one PEFT LoRA folder per checkpoint (adapter_config.json + "
        "adapter_model.safetensors); these are the weights of the base network they adapt "
        "(--architecture builds it). Copied into the zoo under 100 MB, else referenced by "
        "path; their sha256 is checked whenever they load",
    )
    imp.add_argument(
        "--lora-form",
        choices=("canonical", "raw"),
        default="canonical",
        help="adapter zoos: store each adapter in canonical form (SVD of B @ A: one "
        "representative per adapter, the default) or as given",
    )
    imp.add_argument("--overwrite", action="store_true", help="replace an existing zoo in --out")
    imp.set_defaults(func=_cmd_import)

    show = sub.add_parser(
        "show",
        help="summarise a zoo",
        description="Print a zoo's architecture, size, runs and accuracy mean/median/min/max. "
        "A bare folder of .safetensors files works too.",
    )
    show.add_argument("dir", help="zoo directory")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(func=_cmd_show)
