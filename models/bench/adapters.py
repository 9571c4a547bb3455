"""The adapter targets over zoo seeds: ``python -m models.bench.adapters REPORT.json ...``.

Each report is ``rpg evaluate --zoo Z --generator G --json REPORT`` on a ``digits-lora-tasks``
zoo of one seed. Prints, for held-out and seen tasks, every method's mean over seeds (each
seed's value is its mean over tasks) and the standard deviation over seeds, then the targets
of issue 24 on held-out tasks: generated closes >= 70% of the base-to-trained gap, and beats
nearest-seen, multi-task and mismatched by more than one standard deviation (the larger of
the two methods' seed-to-seed stds); and how it compares with the regressor.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="rpg evaluate --json files")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
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
