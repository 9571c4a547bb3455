"""The human-readable tables ``rpg evaluate`` prints: a generated folder against its zoo
(``format_report``), a task generator on seen and held-out tasks (``format_task_report``), an
adapter task generator (``format_adapter_task_report``). Pure formatting of report dicts.
"""

from __future__ import annotations

from typing import Any

from models.evaluation import noise_set_name

__all__ = ["format_adapter_task_report", "format_report", "format_task_report"]


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
