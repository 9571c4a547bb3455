"""Adapter benchmarks: ``python -m models.bench.adapters targets REPORT.json ...`` and
``python -m models.bench.adapters spread ZOO ...``.

``targets``: each report is ``rpg evaluate --zoo Z --generator G --json REPORT`` on a ``digits-lora-tasks``
zoo of one seed. Prints, for held-out and seen tasks, every method's mean over seeds (each
seed's value is its mean over tasks) and the standard deviation over seeds, then the targets
of issue 24 on held-out tasks: generated closes >= 70% of the base-to-trained gap, and beats
nearest-seen, multi-task and mismatched by more than one standard deviation (the larger of
the two methods' seed-to-seed stds); and how it compares with the regressor.

``spread``: how far apart a task zoo's adapters sit in the tokenizer's normalized space (the
space the generator learns in): mean L2 distance between adapters of the same task from
different seeds, of different tasks from the same seed (one family), and of different tasks
from different seeds. What the canonical form changes, before any generator is trained.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.tokenizer import ParameterTokenizer
from models.zoo.store import load_zoo

METHODS = ("base", "trained", "multitask", "nearest_seen", "regressor", "generated", "mismatched")
BEATEN = ("nearest_seen", "multitask", "mismatched")


def _over_seeds(reports: list[dict[str, Any]], kind: str, key: str) -> tuple[float, float]:
    values = [float(r["tasks"][kind][key]) for r in reports]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and stds over seeds, and the held-out targets (JSON-safe)."""
    out: dict[str, Any] = {"n_seeds": len(reports)}
    for kind in ("heldout", "seen"):
        out[kind] = {m: _over_seeds(reports, kind, f"{m}_mean") for m in METHODS}
        out[kind]["gap_closed"] = _over_seeds(reports, kind, "gap_closed")
    held = out["heldout"]
    gen, gen_std = held["generated"]
    targets = {"gap_closed_at_least_0.7": held["gap_closed"][0] >= 0.7}
    for m in BEATEN:
        mean, std = held[m]
        targets[f"beats_{m}_by_more_than_one_std"] = gen - mean > max(std, gen_std)
    reg, reg_std = held["regressor"]
    targets["generated_minus_regressor"] = gen - reg
    targets["regressor_difference_within_one_std"] = abs(gen - reg) <= max(reg_std, gen_std)
    out["targets"] = targets
    return out


def spread(path: Path) -> dict[str, float]:
    """Mean normalized L2 distances within and across tasks and seed families of a zoo."""
    zoo = load_zoo(path)
    states = zoo.state_dicts()
    tokenizer = ParameterTokenizer.fit(states)
    vectors = torch.stack([tokenizer.normalized_vector(s) for s in states])  # (N, D)
    dist = torch.cdist(vectors.double(), vectors.double())  # (N, N)
    task = [tuple(c.condition or ()) for c in zoo.checkpoints]
    run = zoo.run_ids()
    pairs = list(itertools.combinations(range(len(task)), 2))

    def mean(keep: Callable[[int, int], bool]) -> float:
        values = [float(dist[i, j]) for i, j in pairs if keep(i, j)]
        return statistics.fmean(values) if values else float("nan")

    return {
        "same_task_other_seed": mean(lambda i, j: task[i] == task[j] and run[i] != run[j]),
        "other_task_same_seed": mean(lambda i, j: task[i] != task[j] and run[i] == run[j]),
        "other_task_other_seed": mean(lambda i, j: task[i] != task[j] and run[i] != run[j]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    targets = sub.add_parser("targets", help="the issue's targets over zoo seeds")
    targets.add_argument("reports", nargs="+", type=Path, help="rpg evaluate --json files")
    targets.add_argument("--json", type=Path, help="also write the summary here")
    zoos = sub.add_parser("spread", help="distances between a task zoo's adapters")
    zoos.add_argument("zoos", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "spread":
        for path in args.zoos:
            d = spread(path)
            print(f"{path}: " + "  ".join(f"{k} {v:.2f}" for k, v in d.items()))
        return 0
    reports = [json.loads(p.read_text()) for p in args.reports]
    summary = summarize(reports)
    print(f"{summary['n_seeds']} zoo seed(s); mean over seeds (std over seeds)")
    print(f"{'':<10}" + "".join(f"{m:>18}" for m in (*METHODS, "gap_closed")))
    for kind in ("heldout", "seen"):
        row = summary[kind]
        print(f"{kind:<10}" + "".join(
            f"{row[m][0]:>10.4f} ({row[m][1]:.4f})" for m in (*METHODS, "gap_closed")
        ))  # fmt: skip
    for name, value in summary["targets"].items():
        print(f"{name}: {value if isinstance(value, bool) else round(value, 4)}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
