"""Evaluation of generated models: accuracy statistics, IoU / L2 novelty, JSON, plot, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from models.cli.evaluate import format_report, register
from models.evaluation import (
    EvaluationError,
    accuracy_summary,
    add_noise,
    check_generated,
    evaluate_generated,
    evaluate_state_dicts,
    iou,
    iou_matrix,
    l2_matrix,
    load_generated_dir,
    summary_stats,
)
from models.evaluation.plot import plot_accuracy_vs_similarity
from models.zoo import digits
from models.zoo.build import build_digits_zoo
from models.zoo.store import Zoo, load_zoo

TINY = digits.TrainingRecipe(epochs=1, lr=3e-3, batch_size=64)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    out = tmp_path_factory.mktemp("evalzoo") / "mlp"
    return build_digits_zoo(
        "digits-mlp", out, num_checkpoints=6, runs=2, seed=5, progress=False, recipe=TINY
    )


@pytest.fixture(scope="module")
def zoo_sds(zoo: Zoo) -> list[dict[str, torch.Tensor]]:
    return zoo.state_dicts()


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split()


def _noised(sd: dict[str, torch.Tensor], sigma: float, seed: int) -> dict[str, torch.Tensor]:
    return add_noise(sd, sigma, torch.Generator().manual_seed(seed))


def _nan_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    bad = {k: v.clone() for k, v in sd.items()}
    bad["fc1.weight" if "fc1.weight" in bad else next(iter(bad))][0, 0] = float("nan")
    return bad


@pytest.fixture(scope="module")
def report(zoo: Zoo, zoo_sds: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    generated = [zoo_sds[2], zoo_sds[0], _noised(zoo_sds[1], 0.02, 1), _nan_model(zoo_sds[3])]
    names = ["copy_of_2", "copy_of_0", "noised_1", "nan_3"]
    return evaluate_generated(zoo, generated, names, seed=7)


# ---------------------------------------------------------------------------- statistics


def test_accuracy_summary_matches_hand_computed_values() -> None:
    s = accuracy_summary([0.5, 1.0, 0.75, 0.25])
    assert s == {"n": 4, "mean": 0.625, "median": 0.625, "min": 0.25, "max": 1.0}
    odd = accuracy_summary([0.9, 0.1, 0.5])
    assert odd["median"] == 0.5 and odd["mean"] == pytest.approx(0.5) and odd["n"] == 3
    assert accuracy_summary([]) == {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    with pytest.raises(EvaluationError, match=r"fractions in \[0, 1\]"):
        accuracy_summary([0.5, 97.0])


def test_summary_stats_skips_missing_and_non_finite() -> None:
    s = summary_stats([2.0, None, math.nan, 4.0, math.inf])
    assert s == {"n": 2, "mean": 3.0, "median": 3.0, "min": 2.0, "max": 4.0}


def _mask(indices: list[int], n: int = 6) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[indices] = True
    return m


def test_iou_on_hand_made_sets() -> None:
    assert iou(_mask([0, 1, 2]), _mask([1, 2, 3])) == 0.5  # {1,2} / {0,1,2,3}
    assert iou(_mask([]), _mask([])) == 1.0  # two flawless models agree
    assert iou(_mask([]), _mask([4])) == 0.0
    assert iou(_mask([0, 5]), _mask([1, 2])) == 0.0
    assert iou(_mask([3]), _mask([3])) == 1.0
    with pytest.raises(EvaluationError, match="one shape"):
        iou(_mask([1]), _mask([1], n=7))


def test_iou_matrix_equals_pairwise_iou() -> None:
    a = torch.stack([_mask([0, 1, 2]), _mask([]), _mask([5])])
    b = torch.stack([_mask([1, 2, 3]), _mask([]), _mask([0, 1, 2, 5])])
    m = iou_matrix(a, b)
    assert m.shape == (3, 3)
    expected = [[0.5, 0.0, 0.75], [0.0, 1.0, 0.0], [0.0, 0.0, 0.25]]
    assert m.tolist() == expected
    for i in range(3):
        for j in range(3):
            assert m[i, j].item() == iou(a[i], b[j])


def test_l2_matrix_on_hand_made_points() -> None:
    d = l2_matrix(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert d.tolist() == [[0.0, 3.0], [5.0, 4.0]]


# ---------------------------------------------------------------------------- noise


def test_add_noise_spares_counters_and_keeps_variances_positive() -> None:
    sd = {k: v.clone() for k, v in digits.cnn().state_dict().items()}
    sd["bn1.running_var"] = torch.full_like(sd["bn1.running_var"], 0.01)
    noised = _noised(sd, 0.5, seed=0)
    assert set(noised) == set(sd)
    for k, v in sd.items():
        assert noised[k].dtype == v.dtype and noised[k].shape == v.shape
        if k.endswith("num_batches_tracked"):
            assert torch.equal(noised[k], v)
        else:
            assert not torch.equal(noised[k], v), k  # parameters and float buffers are noised
    for k in ("bn1.running_var", "bn2.running_var"):
        assert bool((noised[k] > 0).all()), k  # sigma 0.5 would push many below zero
    w = sd["conv2.weight"]
    assert (noised["conv2.weight"] - w).std().item() == pytest.approx(0.5, rel=0.15)
    assert torch.equal(_noised(sd, 0.5, seed=0)["head.weight"], noised["head.weight"])
    assert not torch.equal(_noised(sd, 0.5, seed=1)["head.weight"], noised["head.weight"])


# ---------------------------------------------------------------------------- novelty


def test_exact_copies_are_found_with_zero_distance_and_iou_one(
    report: dict[str, Any], zoo: Zoo
) -> None:
    by_name = {m["name"]: m for m in report["per_model"]}
    for name, source in (("copy_of_2", 2), ("copy_of_0", 0)):
        m = by_name[name]
        assert m["min_l2"] == 0.0 and m["nearest_by_l2"] == source
        assert m["max_iou"] == 1.0 and m["nearest_by_iou"] == source
        assert m["nearest_by_l2_file"] == zoo.checkpoints[source].file
        assert m["accuracy"] == zoo.checkpoints[source].accuracy
    assert by_name["noised_1"]["min_l2"] > 0.0


def test_accuracy_matches_the_recorded_zoo_accuracy(report: dict[str, Any], zoo: Zoo) -> None:
    recorded = [c.accuracy for c in zoo.checkpoints]
    assert report["novelty"]["zoo_loo"]["accuracy"] == recorded
    assert report["zoo"]["n"] == len(zoo)
    assert report["zoo"]["mean"] == pytest.approx(sum(recorded) / len(recorded))  # type: ignore[arg-type]
    assert report["generated"]["n"] == 4
    assert report["num_test"] == 540


def test_larger_noise_moves_copies_further(
    zoo_sds: list[dict[str, torch.Tensor]], split: digits.DigitsSplit
) -> None:
    sigmas = (0.001, 0.01, 0.05)
    generated = [_noised(zoo_sds[4], s, seed=3) for s in sigmas]
    r = evaluate_state_dicts(zoo_sds, generated, noise_sigmas=(0.01, 0.05))
    l2 = r["novelty"]["generated"]["min_l2"]
    assert l2[0] < l2[1] < l2[2]
    # The baseline rows too: every checkpoint's 0.05 copy is further than its 0.01 copy.
    small, large = r["novelty"]["noise_0.01"]["min_l2"], r["novelty"]["noise_0.05"]["min_l2"]
    assert all(a < b for a, b in zip(small, large, strict=True))


def test_leave_one_out_excludes_self(
    zoo_sds: list[dict[str, torch.Tensor]], split: digits.DigitsSplit
) -> None:
    # Checkpoint 3 is a duplicate of checkpoint 0: each must find the other, not itself.
    sds = [zoo_sds[0], zoo_sds[1], zoo_sds[2], {k: v.clone() for k, v in zoo_sds[0].items()}]
    r = evaluate_state_dicts(
        sds,
        [zoo_sds[1]],
        module=digits.mlp(),
        data=(split.x_test, split.y_test),
    )
    loo = r["novelty"]["zoo_loo"]
    assert loo["nearest_by_l2"][0] == 3 and loo["min_l2"][0] == 0.0
    assert loo["nearest_by_l2"][3] == 0 and loo["nearest_by_iou"][3] == 0
    assert loo["max_iou"][0] == 1.0
    for i in (1, 2):
        assert loo["nearest_by_l2"][i] != i and loo["nearest_by_iou"][i] != i
        assert loo["min_l2"][i] > 0.0
    for key in ("noise_0.01", "noise_0.05"):
        nearest = r["novelty"][key]["nearest_by_l2"]
        assert all(j != i for i, j in enumerate(nearest)), key


def test_half_precision_samples_are_evaluated(
    zoo_sds: list[dict[str, torch.Tensor]], split: digits.DigitsSplit
) -> None:
    # The service can return float16 weights: they must load and land next to their source.
    half = {k: v.half() for k, v in zoo_sds[2].items()}
    r = evaluate_state_dicts(
        zoo_sds, [half], module=digits.mlp(), data=(split.x_test, split.y_test)
    )
    m = r["novelty"]["generated"]
    assert m["nearest_by_l2"] == [2] and 0.0 < m["min_l2"][0] < 0.1
    assert m["accuracy"][0] == pytest.approx(r["novelty"]["zoo_loo"]["accuracy"][2], abs=0.01)


def test_one_checkpoint_zoo_has_no_leave_one_out_neighbour(
    zoo_sds: list[dict[str, torch.Tensor]],
) -> None:
    r = evaluate_state_dicts(zoo_sds[:1], [zoo_sds[0]])
    assert r["novelty"]["zoo_loo"]["min_l2"] == [None]
    assert r["novelty"]["generated"]["min_l2"] == [0.0]
    assert any("one checkpoint" in n for n in r["notes"])


def test_report_is_strict_json_with_the_documented_keys(report: dict[str, Any]) -> None:
    text = json.dumps(report, allow_nan=False)  # raises on NaN / inf
    doc = json.loads(text)
    assert set(doc) >= {"zoo", "generated", "novelty", "per_model"}
    for key in ("n", "mean", "median", "min", "max"):
        assert key in doc["zoo"] and key in doc["generated"]
    assert set(doc["novelty"]) == {"generated", "noise_0.01", "noise_0.05", "zoo_loo"}
    for s in doc["novelty"].values():
        assert set(s["summary"]) == {"accuracy", "max_iou", "min_l2"}
        assert len(s["max_iou"]) == len(s["min_l2"]) == s["n"]
    nan_model = next(m for m in doc["per_model"] if m["name"] == "nan_3")
    assert nan_model["min_l2"] is None and nan_model["nearest_by_l2"] is None
    assert any("NaN" in n for n in doc["notes"])
    assert doc["novelty"]["generated"]["summary"]["min_l2"]["n"] == 3  # the NaN model is skipped


def test_zoo_without_dataset_still_reports_l2(
    zoo: Zoo, zoo_sds: list[dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    bare = dataclasses.replace(zoo, dataset=None)
    r = evaluate_generated(bare, [zoo_sds[1]], ["g"])
    assert r["zoo"] is None and r["generated"] is None
    assert r["per_model"][0]["min_l2"] == 0.0 and r["per_model"][0]["max_iou"] is None
    assert any("no dataset spec" in n for n in r["notes"])
    assert "no dataset spec" in format_report(r)
    with pytest.raises(EvaluationError, match="no dataset spec"):
        plot_accuracy_vs_similarity(r, tmp_path / "p.png")


def test_conditioned_zoo_is_refused(zoo: Zoo, zoo_sds: list[dict[str, torch.Tensor]]) -> None:
    conditioned = dataclasses.replace(zoo, condition={"kind": "vector", "dim": 10})
    with pytest.raises(EvaluationError, match="unconditional zoos"):
        evaluate_generated(conditioned, [zoo_sds[0]])


def test_mismatched_generated_models_name_the_file(zoo_sds: list[dict[str, torch.Tensor]]) -> None:
    missing = {k: v for k, v in zoo_sds[0].items() if k != "fc2.bias"}
    with pytest.raises(EvaluationError, match=r"gen_a\.safetensors.*missing \['fc2\.bias'\]"):
        check_generated(["gen_a.safetensors"], [missing], zoo_sds[0])
    wrong_shape = {**zoo_sds[0], "fc2.bias": torch.zeros(3)}
    with pytest.raises(EvaluationError, match=r"gen_b\.safetensors: tensor 'fc2\.bias'"):
        check_generated(["gen_b.safetensors"], [wrong_shape], zoo_sds[0])


def test_format_report_has_both_blocks(report: dict[str, Any]) -> None:
    text = format_report(report)
    acc, novelty = text.index("accuracy "), text.index("novelty:")
    assert acc < novelty
    block = text[novelty:]
    rows = [
        block.index(r) for r in ("zoo (leave-one-out)", "noise 0.01", "noise 0.05", "generated")
    ]
    assert rows == sorted(rows)
    assert "copy_of_2" in text and "ckpt_" in text


def test_plot_writes_a_png(report: dict[str, Any], tmp_path: Path) -> None:
    out = plot_accuracy_vs_similarity(report, tmp_path / "sub" / "plot.png")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


# ---------------------------------------------------------------------------- files and CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpg")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_load_generated_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="does not exist"):
        load_generated_dir(tmp_path / "nope")
    with pytest.raises(EvaluationError, match=r"no \.safetensors"):
        load_generated_dir(tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EvaluationError, match=r"broken\.safetensors"):
        load_generated_dir(tmp_path)


def test_cli_end_to_end(
    zoo: Zoo,
    zoo_sds: list[dict[str, torch.Tensor]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gen = tmp_path / "generated"
    gen.mkdir()
    save_file(zoo_sds[5], str(gen / "sample_000.safetensors"))
    save_file(_noised(zoo_sds[1], 0.03, 9), str(gen / "sample_001.safetensors"))
    args = _parser().parse_args(
        [
            "evaluate",
            "--zoo",
            str(zoo.path),
            "--generated",
            str(gen),
            "--json",
            str(tmp_path / "out" / "report.json"),
            "--plot",
            str(tmp_path / "out" / "plot.png"),
            "--seed",
            "3",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "zoo (leave-one-out)" in out and "noise 0.05" in out and "sample_001" in out
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m["name"] for m in doc["per_model"]] == [
        "sample_000.safetensors",
        "sample_001.safetensors",
    ]
    assert doc["per_model"][0]["nearest_by_l2_file"] == zoo.checkpoints[5].file
    assert doc["settings"]["seed"] == 3 and doc["zoo"]["n"] == len(zoo)
    assert (tmp_path / "out" / "plot.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cli_reports_a_mismatched_file(
    zoo: Zoo,
    zoo_sds: list[dict[str, torch.Tensor]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    save_file(zoo_sds[0], str(tmp_path / "good.safetensors"))
    bad = {k: v for k, v in zoo_sds[0].items() if k != "fc1.weight"}
    save_file(bad, str(tmp_path / "odd_one.safetensors"))
    args = _parser().parse_args(["evaluate", "--zoo", str(zoo.path), "--generated", str(tmp_path)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "odd_one.safetensors" in err and "fc1.weight" in err


def test_fifty_checkpoint_zoo_against_twenty_models_is_fast(tmp_path: Path) -> None:
    big = build_digits_zoo(
        "digits-mlp", tmp_path / "zoo50", num_checkpoints=50, seed=0, progress=False, recipe=TINY
    )
    big = load_zoo(big.path)
    sds = big.state_dicts()
    generated = [_noised(sds[i], 0.02, i) for i in range(20)]
    digits.load_digits_split()  # import scikit-learn outside the timed part
    started = time.perf_counter()
    r = evaluate_generated(big, generated)
    elapsed = time.perf_counter() - started
    assert r["generated"]["n"] == 20 and r["novelty"]["zoo_loo"]["n"] == 50
    assert elapsed < 10.0, f"evaluation took {elapsed:.1f} s"
