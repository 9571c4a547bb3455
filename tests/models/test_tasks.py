"""Task-conditioned generation: the digits-tasks zoo, training without held-out tasks, and the
per-task evaluation (a scaled-down run of the whole pipeline)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from models.cli.evaluate import format_task_report
from models.cli.evaluate import register as register_evaluate
from models.cli.zoo import register as register_zoo
from models.config import PRESETS
from models.evaluation import EvaluationError
from models.evaluation.tasks import (
    balanced_accuracy,
    evaluate_tasks,
    majority_baseline,
    task_direction,
    zoo_tasks,
)
from models.generator import Generator
from models.rpg import RPGModel
from models.training import TrainConfig, train
from models.training.options import default_diffusion_batch
from models.zoo import digits, tasks
from models.zoo.store import ZOO_FILE, Zoo, ZooCheckpoint, ZooError, load_zoo, save_zoo

SMALL = tasks.TaskRecipe(base=digits.TrainingRecipe(epochs=8), epochs=2)
BUILD: dict[str, Any] = {"num_tasks": 7, "per_task": 2, "holdout": 2, "seed": 4}
FAST: dict[str, Any] = {
    "d_model": 32,
    "d_state": 16,
    "channels": (1, 8, 16, 8, 1),
    "token_size": 256,
    "progress": False,
    "save_every": 0,
}


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def task_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    out = tmp_path_factory.mktemp("tasks") / "zoo"
    return tasks.build_task_zoo(out, progress=False, recipe=SMALL, **BUILD)


@pytest.fixture(scope="module")
def task_bundle(task_zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tasks") / "bundle"
    train(task_zoo.path, out, TrainConfig(steps=8, batch_size=4, diffusion_batch=32, **FAST))
    return out


def _masks(checkpoints: list[ZooCheckpoint]) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c.condition or []) for c in checkpoints}


# ---------------------------------------------------------------------------- masks


def test_all_masks_are_every_nontrivial_mask() -> None:
    masks = tasks.all_masks()
    assert len(masks) == len(set(masks)) == 1022 == tasks.NUM_TASKS
    assert all(len(m) == 10 and set(m) <= {0, 1} for m in masks)
    assert (0,) * 10 not in masks and (1,) * 10 not in masks


def test_select_tasks_is_seeded_disjoint_and_keeps_the_heldout_set() -> None:
    training, heldout = tasks.select_tasks(100, 20, seed=0)
    assert len(training) == 80 and len(heldout) == 20
    assert not set(training) & set(heldout)
    assert tasks.select_tasks(100, 20, seed=0) == (training, heldout)
    assert tasks.select_tasks(100, 20, seed=1)[1] != heldout
    # More (or fewer) training tasks: the same unseen tasks.
    assert tasks.select_tasks(1022, 20, seed=0)[1] == heldout
    assert set(tasks.select_tasks(1022, 20, seed=0)[0]) >= set(training)
    for bad in [(10, 0), (10, 10), (1023, 20)]:
        with pytest.raises(ZooError, match="holdout"):
            tasks.select_tasks(*bad, seed=0)


def test_mask_helpers_by_hand() -> None:
    mask = (0, 1, 0, 0, 1, 1, 0, 0, 0, 1)
    assert tasks.mask_name(mask) == "0100110001"
    y = torch.tensor([0, 1, 4, 9, 3, 5])
    assert tasks.binary_labels(y, mask).tolist() == [0, 1, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="0 or 1"):
        tasks.mask_bits([0.5] + [0.0] * 9)
    with pytest.raises(ValueError, match="0 or 1"):
        tasks.mask_bits([1.0] * 9)


def test_head_from_mask_averages_the_base_rows() -> None:
    weight = torch.arange(30, dtype=torch.float32).reshape(10, 3)  # row c = 3c, 3c+1, 3c+2
    bias = torch.arange(10, dtype=torch.float32)
    mask = (1, 1, 0, 0, 0, 0, 0, 0, 0, 1)  # classes 0, 1, 9 positive
    w, b = tasks.head_from_mask(weight, bias, mask)
    assert w.shape == (2, 3) and b.shape == (2,)
    # mean of rows 0, 1, 9: (0 + 3 + 27) / 3 = 10 (float32: the summation order may round)
    assert w[1].tolist() == pytest.approx([10.0, 11.0, 12.0], rel=1e-6)
    assert b.tolist() == pytest.approx([(2 + 3 + 4 + 5 + 6 + 7 + 8) / 7, 10 / 3])
    with pytest.raises(ValueError, match="positive and negative"):
        tasks.head_from_mask(weight, bias, (0,) * 10)


# ---------------------------------------------------------------------------- metrics


def test_majority_baseline_by_hand(split: digits.DigitsSplit) -> None:
    # One positive class: the majority is "negative", right on every image but the 0s.
    mask = (1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    zeros = int((split.y_test == 0).sum())
    expected = (len(split.y_test) - zeros) / len(split.y_test)
    got = majority_baseline(
        tasks.binary_labels(split.y_train, mask), tasks.binary_labels(split.y_test, mask)
    )
    assert got == pytest.approx(expected) and 0.85 < got < 0.95
    # The majority comes from the training labels, not the test labels.
    assert majority_baseline(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0, 1])) == 0.25


def test_balanced_accuracy_by_hand() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    assert balanced_accuracy(torch.zeros(6, dtype=torch.long), y) == 0.5
    pred = torch.tensor([0, 0, 0, 1, 1, 0])  # recalls 3/4 and 1/2
    assert balanced_accuracy(pred, y) == pytest.approx(0.625)


# ---------------------------------------------------------------------------- the zoo


def test_task_zoo_json(task_zoo: Zoo) -> None:
    doc = json.loads((task_zoo.path / ZOO_FILE).read_text())
    assert doc["condition"] == tasks.TASK_CONDITION
    assert doc["condition"]["labels"] == [str(c) for c in range(10)]
    assert doc["architecture"]["builder"] == "models.zoo.digits:mlp"
    assert doc["architecture"]["kwargs"] == {"hidden": 64, "num_classes": 2}
    assert len(task_zoo) == 7 * 2 and set(task_zoo.run_ids()) == {0}
    training, heldout = tasks.select_tasks(7, 2, seed=4)
    assert _masks(task_zoo.heldout_checkpoints()) == set(heldout)
    assert _masks(task_zoo.training_zoo().checkpoints) == set(training)
    assert doc["provenance"]["heldout_tasks"] == [tasks.mask_name(m) for m in heldout]
    for entry in doc["checkpoints"]:
        assert 0 < sum(entry["condition"]) < 10  # no all-0 / all-1 masks
        assert entry.get("heldout", False) == (tuple(entry["condition"]) in set(heldout))
    assert Counter(map(tuple, (e["condition"] for e in doc["checkpoints"]))) == {
        m: 2 for m in training + heldout
    }


def test_task_models_are_good_and_load_strictly(task_zoo: Zoo, split: digits.DigitsSplit) -> None:
    module = task_zoo.build_module()
    for c in task_zoo.checkpoints[::3]:
        module.load_state_dict(load_file(task_zoo.path / c.file), strict=True)
        labels = tasks.binary_labels(split.y_test, c.condition or [])
        assert digits.accuracy(module, split.x_test, labels) == c.accuracy
        assert c.accuracy is not None and c.accuracy > 0.8


def test_task_zoo_build_is_deterministic(task_zoo: Zoo, tmp_path: Path) -> None:
    again = tasks.build_task_zoo(tmp_path / "again", progress=False, recipe=SMALL, **BUILD)
    assert [c.file for c in again.checkpoints] == [c.file for c in task_zoo.checkpoints]
    for a, b in zip(again.files(), task_zoo.files(), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert [c.to_json() for c in again.checkpoints] == [c.to_json() for c in task_zoo.checkpoints]


def test_heldout_flag_round_trips_and_old_zoos_are_unchanged(task_zoo: Zoo, tmp_path: Path) -> None:
    assert ZooCheckpoint(file="a.safetensors").to_json().get("heldout") is None
    zoo = load_zoo(task_zoo.path)
    assert sum(c.heldout for c in zoo.checkpoints) == 4
    doc = json.loads((task_zoo.path / ZOO_FILE).read_text())
    doc["checkpoints"][0]["heldout"] = "yes"
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in task_zoo.files():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / ZOO_FILE).write_text(json.dumps(doc))
    with pytest.raises(ZooError, match="'heldout' must be true or false"):
        load_zoo(copy)
    all_out = Zoo(
        path=copy,
        architecture=zoo.architecture,
        dataset=zoo.dataset,
        condition=zoo.condition,
        checkpoints=[ZooCheckpoint(**{**c.__dict__, "heldout": True}) for c in zoo.checkpoints],
    )
    save_zoo(all_out)
    with pytest.raises(ZooError, match="every checkpoint"):
        load_zoo(copy).training_zoo()


# ---------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_is_conditional_and_skips_heldout(
    task_zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    original = RPGModel.forward

    def spy(
        self: RPGModel, tokens: torch.Tensor, ids: torch.Tensor, cond: Any = None, **kw: Any
    ) -> torch.Tensor:
        seen.append(cond.detach().clone())
        return original(self, tokens, ids, cond, **kw)

    monkeypatch.setattr(RPGModel, "forward", spy)
    train(task_zoo.path, tmp_path / "b", TrainConfig(steps=12, batch_size=10, **FAST))
    rows = {tuple(int(v) for v in row) for batch in seen for row in batch.tolist()}
    training, heldout = tasks.select_tasks(7, 2, seed=4)
    assert all(batch.shape == (10, 10) for batch in seen)
    assert rows <= set(training) and len(rows) > 1  # masks vary per checkpoint
    assert not rows & set(heldout)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["condition"]["kind"] == "vector" and config["condition"]["dim"] == 10
    assert config["condition"]["labels"] == [str(c) for c in range(10)]
    assert config["model"]["condition_dim"] == 10
    # A conditional zoo's defaults: tensor weighting and the preset's conditional recipe.
    recipe = PRESETS["tiny"].conditional
    assert recipe is not None
    assert config["training"]["token_weighting"] == "tensor"
    assert config["training"]["lr"] == recipe.lr
    # The recipe's value, capped by the one rule for tiny zoos (two draws per real token).
    num_tokens = Generator.from_pretrained(tmp_path / "b").tokenizer.num_tokens
    expected = default_diffusion_batch(recipe.diffusion_batch, 10, num_tokens)
    assert config["training"]["diffusion_batch"] == expected
    assert config["model"]["mean_head"] is recipe.mean_head is True
    assert config["zoo"]["num_checkpoints"] == len(training) * 2  # held-out ones never loaded


# ---------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_evaluate_tasks_report(task_zoo: Zoo, task_bundle: Path, split: digits.DigitsSplit) -> None:
    generator = Generator.from_pretrained(task_bundle)
    report = evaluate_tasks(task_zoo, generator, samples_per_task=2, seen_tasks=2, steps=4, seed=1)
    training, heldout = tasks.select_tasks(7, 2, seed=4)
    held, seen = report["tasks"]["heldout"], report["tasks"]["seen"]
    assert held["n_tasks"] == 2 and seen["n_tasks"] == 2 and held["n_generated"] == 4
    assert [e["task"] for e in held["per_task"]] == [tasks.mask_name(m) for m in heldout]
    assert {tuple(e["mask"]) for e in seen["per_task"]} <= set(training)
    for s in (held, seen):
        for key in ("generated_mean", "generated_min", "generated_median", "trained_mean",
                    "majority_baseline_mean", "generated_balanced_mean", "trained_balanced_mean"):  # fmt: skip
            assert 0.0 <= s[key] <= 1.0, key
        assert s["trained_mean"] > 0.8 and s["trained_balanced_mean"] > 0.7
        assert s["generated_min"] <= s["generated_median"] <= s["generated_max"]
        assert s["gap"] == pytest.approx(s["trained_mean"] - s["generated_mean"])
    for e in held["per_task"]:
        labels = tasks.binary_labels(split.y_test, e["mask"])
        positives = int(labels.sum())
        majority = max(positives, len(labels) - positives) / len(labels)
        assert e["majority_baseline"] == pytest.approx(majority)  # stratified: train agrees
        assert e["trained"]["files"] == [
            c.file for c in task_zoo.checkpoints if tuple(c.condition or []) == tuple(e["mask"])
        ]
        assert e["nearest_task"]["hamming"] >= 1
    assert all(t.heldout for t in zoo_tasks(task_zoo) if t.mask in set(heldout))
    again = evaluate_tasks(task_zoo, generator, samples_per_task=2, seen_tasks=2, steps=4, seed=1)
    assert again["tasks"] == report["tasks"]  # same seed, same models
    assert "held-out (unseen)" in format_task_report(report)
    assert held["with_trained_tensor_mean"] is None and "with_trained_tensor" not in e


@pytest.mark.slow
def test_swap_tensors_scores_each_tensor_from_the_trained_model(
    task_zoo: Zoo, task_bundle: Path, split: digits.DigitsSplit
) -> None:
    from models.evaluation.tasks import _sample_seed, predict

    generator = Generator.from_pretrained(task_bundle)
    report = evaluate_tasks(
        task_zoo, generator, samples_per_task=2, seen_tasks=1, steps=4, seed=1, swap_tensors=True
    )
    held = report["tasks"]["heldout"]
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert list(held["with_trained_tensor_mean"]) == names
    # Recomputed by hand for the first held-out task: its models, one tensor replaced.
    entry = held["per_task"][0]
    generated = generator.sample(2, condition=[float(b) for b in entry["mask"]],
                                 seed=_sample_seed(1, entry["mask"]), sampler="ddim", steps=4)  # fmt: skip
    own = load_file(task_zoo.path / entry["trained"]["files"][0])
    module = task_zoo.build_module()
    labels = tasks.binary_labels(split.y_test, entry["mask"])
    for name in names:
        preds = predict(module, [{**g, name: own[name]} for g in generated], split.x_test)
        expected = float((preds == labels).float().mean())
        assert entry["with_trained_tensor"][name] == pytest.approx(expected), name
    # Swapping every tensor in turn is not the trained model: the swaps differ from it and
    # from each other (this generator is barely trained).
    assert len(set(entry["with_trained_tensor"].values())) > 1
    summary = [
        statistics.fmean(e["with_trained_tensor"][n] for e in held["per_task"]) for n in names
    ]
    assert list(held["with_trained_tensor_mean"].values()) == pytest.approx(summary)
    text = format_task_report(report)
    assert "with one tensor taken from the task's trained model" in text and "fc1.weight" in text
    # The task direction of every tensor, in the architecture's order, recomputed by hand.
    assert list(held["task_direction_mean"]) == names
    training = [t for t in zoo_tasks(task_zoo) if not t.heldout]
    average = torch.stack(
        [load_file(task_zoo.path / t.checkpoints[0].file)["fc1.weight"].double() for t in training]
    ).mean(0)
    trained = [load_file(task_zoo.path / f)["fc1.weight"] for f in entry["trained"]["files"]]
    own_dir = torch.stack([t.double() for t in trained]).mean(0) - average
    slopes = [float(((g["fc1.weight"].double() - average) * own_dir).sum() / own_dir.square().sum())
              for g in generated]  # fmt: skip
    assert entry["task_direction"]["fc1.weight"]["slope"] == pytest.approx(statistics.fmean(slopes))
    assert "task-specific part" in text


def test_task_direction_measures_the_share_of_the_task_specific_part() -> None:
    average = torch.zeros(3, 4, dtype=torch.float64)
    own = torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5.5  # the task's deviation
    trained = [own - 0.25, own + 0.25]  # their mean is `own`
    half = task_direction([own * 0.5], trained, average)
    assert half["slope"] == pytest.approx(0.5) and half["cosine"] == pytest.approx(1.0)
    # The zoo average itself reproduces none of it; the opposite deviation is -1.
    assert task_direction([average.float()], trained, average) == {"slope": 0.0, "cosine": 0.0}
    opposite = task_direction([-own], trained, average)
    assert opposite["slope"] == pytest.approx(-1.0) and opposite["cosine"] == pytest.approx(-1.0)
    # A deviation orthogonal to the task's own: slope and cosine 0, whatever its size.
    ortho = torch.zeros(3, 4)
    ortho[0, 0], ortho[0, 1] = own[0, 1], -own[0, 0]
    assert task_direction([ortho * 10], trained, average)["slope"] == pytest.approx(0.0, abs=1e-12)
    # Averaged over the generated tensors.
    both = task_direction([own, average.float()], trained, average)
    assert both["slope"] == pytest.approx(0.5)


def test_zoo_tasks_groups_by_mask_and_refuses_mixed_flags(task_zoo: Zoo) -> None:
    grouped = zoo_tasks(task_zoo)
    assert len(grouped) == 7 and all(len(t.checkpoints) == 2 for t in grouped)
    assert sum(t.heldout for t in grouped) == 2
    first = task_zoo.checkpoints[0]
    mixed = Zoo(
        path=task_zoo.path,
        architecture=task_zoo.architecture,
        dataset=task_zoo.dataset,
        condition=task_zoo.condition,
        checkpoints=[first, ZooCheckpoint(**{**first.__dict__, "file": "x", "heldout": True})],
    )
    with pytest.raises(EvaluationError, match="held-out and training checkpoints"):
        zoo_tasks(mixed)
    with pytest.raises(EvaluationError, match="not task-conditioned"):
        zoo_tasks(Zoo(path=task_zoo.path, architecture=None, dataset=None,
                      condition={"kind": "none"}, checkpoints=[]))  # fmt: skip


@pytest.mark.slow
def test_evaluate_tasks_refuses_a_foreign_generator(task_zoo: Zoo, tiny_bundle: Path) -> None:
    with pytest.raises(EvaluationError, match="train one on this zoo"):
        evaluate_tasks(task_zoo, Generator.from_pretrained(tiny_bundle))


@pytest.mark.slow
def test_cli_evaluate_generator(
    task_zoo: Zoo, task_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="rpg")
    register_evaluate(parser.add_subparsers(dest="command", required=True))
    base = ["evaluate", "--zoo", str(task_zoo.path)]
    args = parser.parse_args([*base, "--generator", str(task_bundle), "--json",
                              str(tmp_path / "r.json"), "--samples-per-task", "1",
                              "--seen-tasks", "1", "--steps", "3"])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "held-out (unseen)" in out and "majority" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc["tasks"]) == {"heldout", "seen"}
    assert doc["tasks"]["heldout"]["n_tasks"] == 2 and doc["tasks"]["seen"]["n_tasks"] == 1
    # the Zeng et al. baselines, per task from its own 2 checkpoints, pooled per kind
    held = doc["baselines"]["heldout"]
    assert held["generated"]["n"] == 2 and held["noise"]["n"] == 4 and held["average_8"]["k"] == 2
    assert doc["baselines"]["seen"]["gaussian"]["n_tasks"] == 1 and "baselines (Zeng" in out
    args = parser.parse_args([*base, "--generated", str(tmp_path)])
    assert args.func(args) == 1 and "--generator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--generated", str(tmp_path), "--generator", str(task_bundle)])


def test_cli_zoo_build_refuses_foreign_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="rpg")
    register_zoo(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["zoo", "build", "digits-tasks", "--out", str(tmp_path / "z"),
                              "--runs", "2"])  # fmt: skip
    assert args.func(args) == 1 and "--runs only applies" in capsys.readouterr().err
    args = parser.parse_args(["zoo", "build", "digits-mlp", "--out", str(tmp_path / "z"),
                              "--holdout", "3"])  # fmt: skip
    assert args.func(args) == 1 and "--holdout only applies" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


@pytest.mark.slow
def test_cli_zoo_build_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="rpg")
    register_zoo(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["zoo", "build", "digits-tasks", "--out", str(tmp_path / "z"),
                              "--tasks", "3", "--per-task", "1", "--holdout", "1", "--quiet"])  # fmt: skip
    assert args.func(args) == 0
    assert "1 held out from training" in capsys.readouterr().out
    zoo = load_zoo(tmp_path / "z")
    assert len(zoo) == 3 and len(zoo.heldout_checkpoints()) == 1
    assert zoo.provenance["base_accuracy"] > 0.9
    assert all(c.accuracy is not None and c.accuracy > 0.9 for c in zoo.checkpoints)


def test_tensor_spread_separates_task_and_checkpoint_variation() -> None:
    from models.evaluation.task_zoo_stats import tensor_spread

    # Two tasks of two checkpoints: task means differ by 2 in every value, checkpoints by +-0.5.
    def sd(v: float) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor([v, v + 1.0])}

    spread = tensor_spread([[sd(-0.5), sd(0.5)], [sd(1.5), sd(2.5)]], "w")
    assert spread["tensor_std"] == pytest.approx(0.5)  # each checkpoint: values v, v + 1
    assert spread["across"] == pytest.approx(2**0.5)  # task means 0 and 2: sample std sqrt(2)
    assert spread["within"] == pytest.approx(0.5)


def test_task_zoo_stats_prints_every_tensor(
    task_zoo: Zoo, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.evaluation.task_zoo_stats import main

    assert main([str(task_zoo.path)]) == 0
    out = capsys.readouterr().out
    assert "5 training tasks, 2 held out" in out
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert out.count(name) == 2
    # f = 1 is the trained model itself: every row ends with the trained accuracy.
    trained = out.split("trained models: ")[1].split()[0]
    table = out.split("with one tensor")[1].splitlines()
    rows = [line.split() for line in table if line.startswith("fc")]
    assert len(rows) == 4 and all(row[-1] == trained for row in rows)
