"""The digits-lora-tasks zoo: tasks, held-out combinations, the build, and its evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.zoo import digits
from models.zoo.lora_tasks import (
    EMBEDDING_DIM,
    LABEL_SHIFTS,
    TRANSFORMS,
    LoraTask,
    all_tasks,
    select_heldout,
    task_from_embedding,
)
from models.zoo.lora_train import LoraRecipe
from models.zoo.lora_zoo import build_lora_task_zoo
from models.zoo.store import ZooError, load_zoo

QUICK = LoraRecipe(steps=150)


def test_tasks_cross_every_transform_with_every_shift_but_the_base_task() -> None:
    tasks = all_tasks()
    assert len(tasks) == len(TRANSFORMS) * len(LABEL_SHIFTS) - 1
    assert LoraTask("identity", 0) not in tasks
    for task in tasks:
        emb = task.embedding()
        assert len(emb) == EMBEDDING_DIM and sum(emb) == 2.0
        assert task_from_embedding(emb) == task
    with pytest.raises(ValueError, match="one-hot"):
        task_from_embedding([1.0] * EMBEDDING_DIM)


def test_transforms_move_pixels_and_shifts_move_labels() -> None:
    x = torch.arange(64, dtype=torch.float32)[None]  # one image, pixel i = i
    assert LoraTask("identity", 3).inputs(x).equal(x)
    assert LoraTask("flip_h", 0).inputs(x)[0, :8].tolist() == list(range(7, -1, -1))
    assert LoraTask("rot180", 0).inputs(x)[0].tolist() == list(range(63, -1, -1))
    assert LoraTask("transpose", 0).inputs(x)[0, :8].tolist() == list(range(0, 64, 8))
    assert LoraTask("identity", 7).labels(torch.tensor([0, 5, 9])).tolist() == [7, 2, 6]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heldout_tasks_are_new_combinations_of_seen_parts(seed: int) -> None:
    held = select_heldout(8, seed)
    assert len(set(held)) == 8 and held == select_heldout(8, seed)
    seen = [t for t in all_tasks() if t not in held]
    for task in held:
        assert sum(t.transform == task.transform for t in seen) >= 2
        assert sum(t.shift == task.shift for t in seen) >= 2
    assert select_heldout(8, seed) != select_heldout(8, seed + 10)
    with pytest.raises(ZooError, match="--holdout"):
        select_heldout(40, seed)


@pytest.fixture(scope="module")
def lora_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "zoo"
    build_lora_task_zoo(out, per_task=1, holdout=4, seed=0, progress=False, recipe=QUICK)
    return out


def test_build_records_adapters_tasks_and_the_multitask_baseline(
    lora_zoo: Path, tmp_path: Path
) -> None:
    zoo = load_zoo(lora_zoo)
    assert zoo.is_adapter_zoo and len(zoo) == 35 and len(zoo.heldout_checkpoints()) == 4
    assert zoo.condition["dim"] == EMBEDDING_DIM
    assert zoo.extras == {"multitask": "multitask.safetensors"}
    assert (lora_zoo / "multitask.safetensors").is_file()
    assert zoo.adapter is not None and zoo.adapter["form"] == "canonical"
    assert set(zoo.run_ids()) == {0}  # one adapter per task: one seed family
    # Deterministic: the same arguments give the same bytes.
    again = tmp_path / "again"
    build_lora_task_zoo(again, per_task=1, holdout=4, seed=0, progress=False, recipe=QUICK)
    for name in ["zoo.json"]:
        a = json.loads((lora_zoo / name).read_text())
        b = json.loads((again / name).read_text())
        assert a["checkpoints"] == b["checkpoints"]
    for c in zoo.checkpoints:
        assert (lora_zoo / c.file).read_bytes() == (again / c.file).read_bytes()


def test_an_adapter_matters_on_these_tasks() -> None:
    split = digits.load_digits_split()
    ((base, _),) = digits.train_run(
        lambda: digits.mlp(hidden=64), split, num_checkpoints=1, seed=0,
        recipe=digits.TrainingRecipe(epochs=10),
    )  # fmt: skip
    module = digits.mlp(hidden=64)
    module.load_state_dict(base)
    shifted = LoraTask("identity", 5)
    assert (
        digits.accuracy(module, shifted.inputs(split.x_test), shifted.labels(split.y_test)) < 0.05
    )


@pytest.mark.slow
def test_evaluate_reports_every_method_for_heldout_and_seen(lora_zoo: Path, tmp_path: Path) -> None:
    from models.training import TrainConfig, train
    from service.cli import main as rpg_main

    bundle = tmp_path / "gen"
    options = TrainConfig(
        steps=5, d_model=32, d_state=16, channels=(1, 8, 16, 8, 1), progress=False, save_every=0
    )
    train(lora_zoo, bundle, options)
    code = rpg_main(
        ["evaluate", "--zoo", str(lora_zoo), "--generator", str(bundle), "--samples-per-task",
         "1", "--seen-tasks", "2", "--steps", "3", "--json", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    for kind, n in (("heldout", 4), ("seen", 2)):
        t = report["tasks"][kind]
        assert t["n_tasks"] == n
        for method in ("base", "trained", "multitask", "nearest_seen", "regressor",
                       "generated", "mismatched"):  # fmt: skip
            assert 0.0 <= t[f"{method}_mean"] <= 1.0 and t[f"{method}_std"] >= 0.0
        assert t["trained_mean"] > t["base_mean"] + 0.3  # adapters matter on these tasks
    entry = report["tasks"]["heldout"]["per_task"][0]
    assert entry["nearest_seen_tasks"] and entry["mismatched_with"] != entry["task"]
