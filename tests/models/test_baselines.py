"""The Zeng et al. 2025 baselines: noise matched by bisection, averages of k, per-value Gaussian,
and their place in ``rpg evaluate`` reports (JSON, table, plot)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from models.cli.evaluate import format_report, register
from models.cli.reports import _task_baseline_rows
from models.evaluation import EvaluationError, evaluate_generated, evaluate_state_dicts
from models.evaluation.baseline_sets import BASELINE_KEYS
from models.evaluation.baselines import (
    averages,
    bisect_sigma,
    float_buffer_names,
    gaussian_samples,
    noised_copies,
    tensor_stds,
)
from models.evaluation.plot import plot_accuracy_vs_similarity
from models.evaluation.task_baselines import TaskBaselines, summarize_task_baselines
from models.zoo import digits
from models.zoo.build import build_digits_zoo
from models.zoo.store import Zoo

TINY = digits.TrainingRecipe(epochs=1, lr=3e-3, batch_size=64)


def _cnn_zoo(n: int = 5) -> list[dict[str, torch.Tensor]]:
    """digits-cnn state dicts (BatchNorm) with distinct random weights and BN statistics."""
    zoo = []
    for i in range(n):
        torch.manual_seed(i)
        module = digits.cnn(channels=(4, 4))
        sd = {k: v.clone() for k, v in module.state_dict().items()}
        for name in sd:
            if name.endswith("running_var"):
                sd[name] = torch.rand(sd[name].shape) + 0.05
            elif name.endswith("running_mean"):
                sd[name] = torch.randn(sd[name].shape)
            elif name.endswith("num_batches_tracked"):
                sd[name] = torch.tensor(100 + i)
        zoo.append(sd)
    return zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    out = tmp_path_factory.mktemp("baselinezoo") / "mlp"
    return build_digits_zoo(
        "digits-mlp", out, num_checkpoints=6, runs=2, seed=11, progress=False, recipe=TINY
    )


# ---------------------------------------------------------------------------- pure functions


def test_bisection_converges_on_a_monotone_toy() -> None:
    # accuracy falls from 1 to 0 as log(sigma) goes from -9 to 0: target 0.4 at sigma e^-5.4
    def accuracy_at(sigma: float) -> float:
        return min(1.0, max(0.0, -math.log(sigma) / 9.0))

    sigma, history = bisect_sigma(accuracy_at, 0.6, iterations=12)
    assert len(history) == 12
    assert math.isclose(sigma, math.exp(-5.4), rel_tol=0.01)
    assert abs(accuracy_at(sigma) - 0.6) < 1e-3
    # a target no sigma reaches ends at the low end of the range, and says so by its value
    low, _ = bisect_sigma(accuracy_at, 2.0, low=1e-4, high=1.0, iterations=8)
    assert low < 1e-3


def test_bisection_rejects_a_bad_range() -> None:
    with pytest.raises(EvaluationError, match="0 < low < high"):
        bisect_sigma(lambda s: 1.0, 0.5, low=1.0, high=0.1)


def test_noise_scales_with_each_tensors_zoo_std_and_spares_buffers() -> None:
    zoo = _cnn_zoo()
    buffers = float_buffer_names(zoo[0])
    assert buffers == {n for n in zoo[0] if n.endswith(("running_mean", "running_var"))}
    stds = tensor_stds(zoo, buffers)
    assert set(stds) == {n for n, t in zoo[0].items() if t.is_floating_point()} - buffers
    noised = noised_copies(zoo, 0.5, stds, torch.Generator().manual_seed(0))
    for src, out in zip(zoo, noised, strict=True):
        assert out.keys() == src.keys()
        for name, t in src.items():
            assert out[name].shape == t.shape and out[name].dtype == t.dtype
            if name in stds:
                diff = (out[name] - t).std().item() if t.numel() > 1 else None
                if t.numel() >= 64:  # enough values for the std to be close to 0.5 * s
                    assert diff == pytest.approx(0.5 * stds[name], rel=0.3)
            else:  # buffers and the integer counter: the source's, untouched
                assert torch.equal(out[name], t)


def test_averages_and_gaussian_keep_variances_positive_and_copy_ints() -> None:
    zoo = _cnn_zoo()
    gen = torch.Generator().manual_seed(3)
    avg = averages(zoo, 8, 4, gen)  # k capped at the zoo size: every model is the zoo mean
    gauss = gaussian_samples(zoo, 4, gen, float_buffer_names(zoo[0]))
    mean_var = torch.stack([sd["bn1.running_var"] for sd in zoo]).mean(0)
    for sd in avg + gauss:
        assert sd.keys() == zoo[0].keys()
        for name, t in sd.items():
            assert t.shape == zoo[0][name].shape and t.dtype == zoo[0][name].dtype
            if name.endswith("running_var"):
                assert bool((t > 0).all())
            if not t.is_floating_point():
                assert int(t) in {100 + i for i in range(len(zoo))}
        # BatchNorm statistics are averaged, never drawn
        assert torch.allclose(sd["bn1.running_var"], mean_var, atol=1e-6)
    pair = averages(zoo, 2, 1, torch.Generator().manual_seed(1))[0]
    parts = [
        i
        for i, sd in enumerate(zoo)
        for j, other in enumerate(zoo)
        if j > i
        if torch.allclose(
            pair["conv1.weight"], (sd["conv1.weight"] + other["conv1.weight"]) / 2, atol=1e-6
        )
    ]
    assert len(parts) == 1  # exactly one pair of distinct checkpoints makes it


def test_gaussian_values_follow_the_zoo_spread() -> None:
    zoo = _cnn_zoo(n=8)
    samples = gaussian_samples(zoo, 200, torch.Generator().manual_seed(0), set())
    w = torch.stack([s["conv1.weight"] for s in samples])  # (200, *shape)
    ref = torch.stack([s["conv1.weight"] for s in zoo])
    assert torch.allclose(w.mean(0), ref.mean(0), atol=0.05 + 0.3 * ref.std(0).max().item())
    assert w.std(0).mean().item() == pytest.approx(ref.std(0, correction=0).mean().item(), rel=0.15)


def test_a_one_checkpoint_zoo_gives_copies_not_nan() -> None:
    zoo = _cnn_zoo(n=1)
    (sample,) = gaussian_samples(zoo, 1, torch.Generator().manual_seed(0), set())
    assert all(torch.equal(sample[k].float(), zoo[0][k].float()) for k in zoo[0])


# ---------------------------------------------------------------------------- reports


SIGMA = 0.5


def _report(zoo: Zoo, seed: int) -> dict[str, Any]:
    # "generated": the zoo plus noise of a known sigma (other draws than the baseline's)
    sds = zoo.state_dicts()
    stds = tensor_stds(sds, set())
    generated = noised_copies(sds, SIGMA, stds, torch.Generator().manual_seed(99))
    return evaluate_generated(zoo, generated, [f"g{i}" for i in range(6)], seed=seed)


@pytest.fixture(scope="module")
def report(zoo: Zoo) -> dict[str, Any]:
    return _report(zoo, seed=4)


def test_report_has_every_baseline_with_the_generated_fields(report: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(report, allow_nan=False))
    assert tuple(doc["baselines"]) == BASELINE_KEYS
    generated_fields = set(doc["novelty"]["generated"])
    for key, s in doc["baselines"].items():
        assert set(s) >= generated_fields, key
        assert set(s["summary"]) == {"accuracy", "max_iou", "min_l2"}
        assert len(s["accuracy"]) == len(s["max_iou"]) == len(s["min_l2"]) == s["n"]
    assert doc["baselines"]["noise"]["n"] == len(doc["zoo_files"])  # one copy per checkpoint
    assert doc["baselines"]["average_2"]["n"] == doc["baselines"]["gaussian"]["n"] == 6
    assert doc["baselines"]["average_4"]["k"] == 4
    assert doc["baselines"]["average_8"]["k"] == 6  # capped at the zoo's 6 checkpoints
    assert any("average_8: the zoo has 6 checkpoints" in n for n in doc["notes"])
    noise = doc["baselines"]["noise"]
    assert len(noise["sigma_search"]) == doc["settings"]["baselines"]["bisection_iterations"]
    assert noise["sigma"] in [h["sigma"] for h in noise["sigma_search"]]
    # the matched set is the one closest in mean accuracy to the generated models
    gaps = [abs(h["accuracy"] - noise["matched_accuracy"]) for h in noise["sigma_search"]]
    chosen = next(h for h in noise["sigma_search"] if h["sigma"] == noise["sigma"])
    assert abs(chosen["accuracy"] - noise["matched_accuracy"]) == min(gaps)
    assert noise["matched_accuracy"] == doc["generated"]["mean"]


def test_noise_of_copies_matches_their_accuracy_and_stays_near_the_zoo(
    report: dict[str, Any],
) -> None:
    noise = report["baselines"]["noise"]
    assert abs(noise["summary"]["accuracy"]["mean"] - report["generated"]["mean"]) < 0.02
    assert SIGMA / 3 < noise["sigma"] < SIGMA * 3  # the bisection finds about the noise used
    # sigma is in units of each tensor's zoo std, as the normalized space is: a noised copy
    # lies about sigma * sqrt(parameters) from its source
    expected = noise["sigma"] * math.sqrt(report["settings"]["num_parameters"])
    assert noise["summary"]["min_l2"]["mean"] == pytest.approx(expected, rel=0.25)


def test_baselines_are_reproducible_with_a_seed(zoo: Zoo, report: dict[str, Any]) -> None:
    again = _report(zoo, seed=4)
    other = _report(zoo, seed=5)
    assert again["baselines"] == report["baselines"]
    assert other["baselines"]["gaussian"]["min_l2"] != report["baselines"]["gaussian"]["min_l2"]


def test_no_baselines_and_no_test_set(zoo: Zoo) -> None:
    sds = zoo.state_dicts()
    off = evaluate_state_dicts(sds, sds[:1], baselines=False)
    assert off["baselines"] is None and off["settings"]["baselines"] is None
    l2_only = evaluate_state_dicts(sds, sds[:2])  # no module, no data: no accuracy to match
    assert l2_only["baselines"]["noise"] is None
    assert l2_only["baselines"]["gaussian"]["summary"]["min_l2"]["n"] == 2
    assert any("noise baseline needs accuracy" in n for n in l2_only["notes"])


def test_table_and_plot_show_the_baselines(report: dict[str, Any], tmp_path: Path) -> None:
    text = format_report(report)
    for label in ("baseline: noise, sigma", "baseline: average of 2", "per-value Gaussian"):
        assert text.count(label) == 2  # accuracy block and novelty block
    png = plot_accuracy_vs_similarity(report, tmp_path / "plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_flag_skips_baselines(zoo: Zoo, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="rpg")
    register(parser.add_subparsers(dest="command", required=True))
    gen = tmp_path / "gen"
    gen.mkdir()
    save_file(zoo.state_dicts()[0], str(gen / "a.safetensors"))
    for flag, expect in (([], True), (["--no-baselines"], False)):
        out = tmp_path / f"r{len(flag)}.json"
        args = parser.parse_args(
            ["evaluate", "--zoo", str(zoo.path), "--generated", str(gen), "--json", str(out), *flag]
        )
        assert args.func(args) == 0
        doc = json.loads(out.read_text())
        assert (doc["baselines"] is not None) is expect


# ---------------------------------------------------------------------------- task zoos


def test_task_baselines_score_each_task_against_its_own_checkpoints(zoo: Zoo) -> None:
    sds = zoo.state_dicts()
    split = digits.load_digits_split()
    scorer = TaskBaselines(digits.mlp(), seed=2)
    stds = tensor_stds(sds, set())
    entries = []
    for mask, trained in (((1,) * 5 + (0,) * 5, sds[:3]), ((0, 1) * 5, sds[3:])):
        generated = noised_copies(trained, SIGMA, stds, torch.Generator().manual_seed(1))
        # the scorer only needs labels; the mlp zoo's 10-class labels stand in for a task's
        entry = scorer(mask, generated, trained, split.x_test, split.y_test)
        assert set(entry["baselines"]) == {"generated", *BASELINE_KEYS}
        assert entry["baselines"]["noise"]["n"] == len(trained) == 3
        assert entry["baselines"]["average_4"]["k"] == 3  # capped at the task's checkpoints
        entries.append(entry)
    report = {"tasks": {"heldout": {"per_task": entries}, "seen": {"per_task": []}}}
    pooled = summarize_task_baselines(report)
    assert pooled["seen"] is None and "oracle" in pooled["reference"]
    held = pooled["heldout"]
    assert held["generated"]["n"] == 6 and held["generated"]["n_tasks"] == 2
    assert held["noise"]["sigma"]["n"] == 2 and held["average_8"]["k"] == 3
    accs = [a for e in entries for a in e["baselines"]["gaussian"]["accuracy"]]
    assert held["gaussian"]["summary"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 6)
    assert "held-out: average of 4 (3 used)" in "\n".join(_task_baseline_rows(pooled))


def test_bisection_prefers_the_most_noise_among_equally_accurate_sigmas() -> None:
    # discrete accuracy: flat at the target up to sigma 0.01, then falling
    def accuracy_at(sigma: float) -> float:
        return 0.9 if sigma <= 0.01 else 0.5

    sigma, history = bisect_sigma(accuracy_at, 0.9, iterations=10)
    ties = [s for s, a in history if a == 0.9]
    assert len(ties) > 1 and sigma == max(ties) and sigma <= 0.01
    assert sigma > 0.005  # the bisection closed in on the edge of the flat part


def test_a_generated_mean_above_every_noised_set_is_said(zoo: Zoo) -> None:
    sds = zoo.state_dicts()
    best = max(range(len(sds)), key=lambda i: zoo.checkpoints[i].accuracy or 0.0)
    r = evaluate_generated(zoo, [sds[best]] * 2, ["best", "best_again"], seed=0)
    assert r["generated"]["mean"] > r["zoo"]["mean"]
    assert any("above that of every noised set" in n for n in r["notes"])
    noise = r["baselines"]["noise"]
    assert all(h["accuracy"] < r["generated"]["mean"] for h in noise["sigma_search"])
