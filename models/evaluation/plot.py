"""The evaluation plot: accuracy against max IoU similarity to the zoo, one marker per model.

matplotlib is imported inside ``plot_accuracy_vs_similarity`` (the rest of the package never pays
for it) and drawn through the Agg canvas directly, so no GUI backend or pyplot global state is
touched.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path
from typing import Any

from models.errors import EvaluationError
from models.evaluation.novelty import noise_set_name

__all__ = ["plot_accuracy_vs_similarity"]


def _baseline_label(key: str, s: dict[str, Any]) -> str:
    if key == "noise":
        return f"noise σ={s['sigma']:.3g}×std (matched)"
    if key == "gaussian":
        return "per-value Gaussian"
    asked = key.removeprefix("average_")
    return f"average of {asked}" + ("" if str(s["k"]) == asked else f" ({s['k']} used)")


# (novelty-set key, legend label, marker, colour); noise sets cycle through _NOISE_STYLE
_ZOO = ("zoo_loo", "zoo (leave-one-out)", "o", "tab:blue")
_GENERATED = ("generated", "generated", "*", "tab:red")
_NOISE_STYLE = (("s", "tab:orange"), ("^", "tab:green"), ("v", "tab:purple"), ("D", "tab:brown"))
# Zeng et al. baselines (report["baselines"]): hollow markers, so they read as a family apart.
_BASELINE_STYLE = {
    "noise": ("P", "black"),
    "average_2": ("<", "tab:olive"),
    "average_4": (">", "tab:cyan"),
    "average_8": ("h", "tab:pink"),
    "gaussian": ("X", "tab:gray"),
}


def plot_accuracy_vs_similarity(report: dict[str, Any], path: Path | str) -> Path:
    """Write a PNG scatter of accuracy (y) vs max IoU with the zoo (x); returns the path.

    One series per novelty set of ``report`` (from ``evaluate_generated``): the zoo
    (leave-one-out), each noise level, the generated models, and each baseline set of
    ``report["baselines"]`` when there are any. Needs accuracy, i.e. a zoo with a dataset spec.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = report["novelty"]
    if sets["generated"]["summary"]["accuracy"] is None:
        raise EvaluationError(
            "the plot needs accuracy and IoU, but this zoo has no dataset spec; "
            "use the L2 numbers in the table or JSON instead"
        )
    series: list[tuple[dict[str, Any], str, str, str, bool]] = [(sets[_ZOO[0]], *_ZOO[1:], True)]
    for sigma, (marker, colour) in zip(
        report["settings"]["noise_sigmas"], cycle(_NOISE_STYLE), strict=False
    ):
        label = f"zoo + noise σ={sigma:g}"
        series.append((sets[noise_set_name(sigma)], label, marker, colour, True))
    series.append((sets[_GENERATED[0]], *_GENERATED[1:], True))
    for key, s in (report.get("baselines") or {}).items():
        if s is not None:
            marker, colour = _BASELINE_STYLE.get(key, ("d", "black"))
            series.append((s, f"baseline: {_baseline_label(key, s)}", marker, colour, False))

    fig = Figure(figsize=(7.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # attaches itself to fig; savefig then renders with Agg
    ax = fig.add_subplot(1, 1, 1)
    for s, label, marker, colour, filled in series:
        points = [
            (x, y)
            for x, y in zip(s["max_iou"], s["accuracy"], strict=True)
            if x is not None and y is not None
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        # Zoo and generated points are drawn above the (more numerous) noise points.
        size, z = {"generated": (90, 4), "zoo (leave-one-out)": (36, 3)}.get(label, (36, 2))
        ax.scatter(
            xs,
            ys,
            s=size,
            marker=marker,
            facecolors=colour if filled else "none",
            edgecolors=colour,
            alpha=0.75,
            zorder=z,
            label=f"{label} (n={len(xs)})",
        )
    ax.set_xlabel("max IoU of wrong-prediction sets with the zoo (1 = same mistakes)")
    ax.set_ylabel("test accuracy")
    title = report.get("architecture") or "zoo"
    ax.set_title(f"{title}: accuracy vs similarity to the nearest zoo checkpoint")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
