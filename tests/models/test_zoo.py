"""Model zoos: digits data and architectures, zoo building, the zoo.json store, import, CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.cli.zoo import register
from models.zoo import digits
from models.zoo.build import DIGITS_ARCHITECTURES, build_digits_zoo, import_zoo
from models.zoo.store import ZOO_FILE, Zoo, ZooCheckpoint, ZooError, build_module, load_zoo

TINY = digits.TrainingRecipe(epochs=1, lr=3e-3, batch_size=64)


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    out = tmp_path_factory.mktemp("zoo") / "mlp"
    return build_digits_zoo(
        "digits-mlp", out, num_checkpoints=4, runs=2, seed=3, progress=False, recipe=TINY
    )


# ---------------------------------------------------------------------------- data


def test_split_is_deterministic_scaled_and_typed(split: digits.DigitsSplit) -> None:
    again = digits.load_digits_split()
    assert torch.equal(split.x_train, again.x_train) and torch.equal(split.y_test, again.y_test)
    other = digits.load_digits_split(seed=1)
    assert not torch.equal(split.y_test, other.y_test)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.x_train.shape[1] == 64 and split.x_test.shape[1] == 64
    assert len(split.y_train) + len(split.y_test) == 1797
    assert float(split.x_train.min()) >= 0.0 and float(split.x_train.max()) == 1.0
    # Pixels are integers 0..16 before scaling.
    assert torch.equal(split.x_test * 16, (split.x_test * 16).round())


def test_split_is_stratified(split: digits.DigitsSplit) -> None:
    from sklearn.datasets import load_digits

    total = Counter(load_digits().target.tolist())
    test = Counter(split.y_test.tolist())
    train = Counter(split.y_train.tolist())
    for c, n in total.items():
        assert train[c] + test[c] == n
        assert abs(test[c] - 0.3 * n) <= 1.0  # every class keeps its share (to one sample)


def test_split_from_spec_round_trips(split: digits.DigitsSplit) -> None:
    spec = digits.dataset_spec(split)
    assert spec == {
        "name": "sklearn-digits",
        "split": {"test_fraction": 0.3, "seed": 0, "stratified": True},
    }
    assert torch.equal(digits.split_from_spec(spec).x_test, split.x_test)
    with pytest.raises(ValueError, match="not 'sklearn-digits'"):
        digits.split_from_spec({"name": "mnist"})


# ---------------------------------------------------------------------------- architectures


def test_param_counts() -> None:
    assert _num_params(digits.mlp()) == (64 * 128 + 128) + (128 * 10 + 10)  # 9,610
    assert _num_params(digits.mlp(num_classes=2)) == (64 * 128 + 128) + (128 * 2 + 2)
    # conv1 (no bias) + bn1 + conv2 (no bias) + bn2 + head on 16 x 4 x 4
    expected_cnn = 1 * 8 * 9 + 2 * 8 + 8 * 16 * 9 + 2 * 16 + (16 * 4 * 4 * 10 + 10)
    assert _num_params(digits.cnn()) == expected_cnn == 3842
    assert any(isinstance(m, nn.BatchNorm2d) for m in digits.cnn().modules())


def test_architectures_accept_flat_and_image_inputs() -> None:
    x = torch.rand(5, 64)
    assert digits.mlp()(x).shape == (5, 10)
    assert digits.mlp(hidden=7, num_classes=2)(x).shape == (5, 2)
    net = digits.cnn()
    assert net(x).shape == (5, 10)
    assert torch.allclose(net.eval()(x), net(x.reshape(5, 1, 8, 8)))
    assert digits.cnn(channels=[4, 4, 4], num_classes=3)(x).shape == (5, 3)
    with pytest.raises(ValueError, match="at most 4"):
        digits.cnn(channels=(1, 1, 1, 1, 1))


def test_accuracy_counts_correct_rows_and_restores_mode() -> None:
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))  # prediction = argmax of the input itself
    head.train()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert digits.accuracy(head, x, y) == 0.75
    assert head.training
    with pytest.raises(ValueError):
        digits.accuracy(head, x, y[:2])


def test_checkpoints_per_run_and_run_seeds() -> None:
    assert digits.checkpoints_per_run(50, 3) == [17, 17, 16]
    assert digits.checkpoints_per_run(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least one checkpoint per run"):
        digits.checkpoints_per_run(2, 3)
    assert digits.run_seed(0, 1) != digits.run_seed(1, 0)
    assert digits.run_seed(5, 2) == digits.run_seed(5, 2)


def test_train_run_leaves_global_state_alone(split: digits.DigitsSplit) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    out = digits.train_run(digits.mlp, split, num_checkpoints=3, seed=0, recipe=TINY)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert len(out) == 3 and all(0.0 <= acc <= 1.0 for _, acc in out)


def test_train_run_rejects_more_checkpoints_than_minibatches(split: digits.DigitsSplit) -> None:
    with pytest.raises(ValueError, match="save fewer checkpoints"):
        digits.train_run(digits.mlp, split, num_checkpoints=5000, seed=0, recipe=TINY)


# ---------------------------------------------------------------------------- building


def test_small_zoo_json(small_zoo: Zoo) -> None:
    doc = json.loads((small_zoo.path / ZOO_FILE).read_text())
    assert doc["format"] == "rpg-zoo" and doc["version"] == 1
    assert doc["architecture"] == DIGITS_ARCHITECTURES["digits-mlp"]
    assert doc["architecture"]["builder"] == "models.zoo.digits:mlp"
    assert doc["dataset"]["split"] == {"test_fraction": 0.3, "seed": 0, "stratified": True}
    assert doc["condition"] == {"kind": "none"}
    assert [c["run"] for c in doc["checkpoints"]] == [0, 0, 1, 1]
    assert all(c["condition"] is None for c in doc["checkpoints"])
    assert doc["provenance"]["seed"] == 3 and doc["provenance"]["epochs"] == TINY.epochs
    assert small_zoo.run_ids() == [0, 0, 1, 1]
    assert sorted(p.name for p in small_zoo.path.iterdir()) == sorted(
        [ZOO_FILE] + [c["file"] for c in doc["checkpoints"]]
    )


def test_small_zoo_checkpoints_load_strictly_with_recorded_accuracy(
    small_zoo: Zoo, split: digits.DigitsSplit
) -> None:
    sds = small_zoo.state_dicts()
    for entry, sd in zip(small_zoo.checkpoints, sds, strict=True):
        module = build_module(small_zoo.architecture or {})
        module.load_state_dict(sd, strict=True)
        assert entry.accuracy == digits.accuracy(module, split.x_test, split.y_test)
    # Checkpoints within a run move a little; the two runs start from different seeds.
    assert not torch.equal(sds[0]["fc1.weight"], sds[1]["fc1.weight"])
    assert (sds[1]["fc1.weight"] - sds[0]["fc1.weight"]).norm() < (
        sds[2]["fc1.weight"] - sds[0]["fc1.weight"]
    ).norm()


def test_build_is_deterministic(small_zoo: Zoo, tmp_path: Path) -> None:
    again = build_digits_zoo(
        "digits-mlp", tmp_path / "a", num_checkpoints=4, runs=2, seed=3, progress=False, recipe=TINY
    )
    for a, b in zip(small_zoo.files(), again.files(), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert again.accuracies() == small_zoo.accuracies()
    other = build_digits_zoo(
        "digits-mlp", tmp_path / "b", num_checkpoints=4, runs=2, seed=4, progress=False, recipe=TINY
    )
    assert other.files()[0].read_bytes() != small_zoo.files()[0].read_bytes()


def test_cnn_zoo_keeps_batchnorm_buffers(tmp_path: Path) -> None:
    zoo = build_digits_zoo(
        "digits-cnn", tmp_path / "cnn", num_checkpoints=2, progress=False, recipe=TINY
    )
    sd = zoo.state_dicts()[0]
    assert {"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"} <= set(sd)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    digits.cnn().load_state_dict(sd, strict=True)


def test_build_refuses_to_overwrite_unless_asked(small_zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "z"
    build = partial(build_digits_zoo, "digits-mlp", out, num_checkpoints=1, progress=False)
    build(recipe=TINY)
    first = out.joinpath("ckpt_000.safetensors").read_bytes()
    with pytest.raises(ZooError, match="not empty"):
        build(recipe=TINY, seed=1)
    build(recipe=TINY, seed=1, overwrite=True)
    assert out.joinpath("ckpt_000.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["z"]  # no temp or old dirs left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ZooError, match="other than a zoo"):
        build_digits_zoo("digits-mlp", other, num_checkpoints=1, progress=False, overwrite=True)
    assert (other / "todo.txt").read_text() == "keep me"


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(digits, "train_run", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_digits_zoo("digits-mlp", tmp_path / "z", num_checkpoints=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_recipe_reaches_high_accuracy(tmp_path: Path) -> None:
    zoo = build_digits_zoo("digits-mlp", tmp_path / "z", num_checkpoints=5, progress=False)
    accs = [a for a in zoo.accuracies() if a is not None]
    assert len(accs) == 5 and min(accs) >= 0.95


@pytest.mark.slow
def test_default_cnn_zoo_reaches_high_accuracy(tmp_path: Path) -> None:
    zoo = build_digits_zoo("digits-cnn", tmp_path / "z", num_checkpoints=10, progress=False)
    assert min(a for a in zoo.accuracies() if a is not None) >= 0.95


# ---------------------------------------------------------------------------- store


def _copy_bare(zoo: Zoo, dest: Path) -> Path:
    dest.mkdir()
    for f in zoo.files():
        shutil.copy(f, dest / f.name)
    return dest


def test_load_zoo_bare_folder(small_zoo: Zoo, tmp_path: Path) -> None:
    bare = load_zoo(_copy_bare(small_zoo, tmp_path / "bare"))
    assert bare.architecture is None and bare.dataset is None
    assert bare.run_ids() == [0, 1, 2, 3]
    assert bare.accuracies() == [None] * 4
    for a, b in zip(bare.state_dicts(), small_zoo.state_dicts(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ZooError, match="does not name its architecture"):
        bare.build_module()


def test_load_zoo_rejects_mismatched_and_missing_files(small_zoo: Zoo, tmp_path: Path) -> None:
    bare = _copy_bare(small_zoo, tmp_path / "bare")
    save_file(
        {k: v for k, v in digits.mlp(hidden=16).state_dict().items()}, bare / "odd.safetensors"
    )
    with pytest.raises(ZooError, match=r"odd\.safetensors: tensor 'fc1\.\w+' is \(16"):
        load_zoo(bare)
    (bare / "odd.safetensors").unlink()
    save_file({"w": torch.zeros(2)}, bare / "zz.safetensors")
    with pytest.raises(ZooError, match=r"zz\.safetensors has different keys"):
        load_zoo(bare)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="neither"):
        load_zoo(tmp_path / "empty")

    listed = tmp_path / "listed"
    shutil.copytree(small_zoo.path, listed)
    (listed / small_zoo.checkpoints[1].file).unlink()
    with pytest.raises(ZooError, match=small_zoo.checkpoints[1].file):
        load_zoo(listed)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"format": "other"}, "'format'"),
        ({"version": 2}, "version 2"),
        ({"condition": {"kind": "text"}}, "'condition'"),
        ({"architecture": {"builder": "no_colon"}}, "module:function"),
        ({"checkpoints": []}, "non-empty"),
        ({"checkpoints": [{"file": "../x.safetensors", "run": 0}]}, "inside the zoo"),
        ({"checkpoints": [{"file": "ckpt_000.safetensors", "run": -1}]}, "'run'"),
    ],
)
def test_load_zoo_validates_zoo_json(
    small_zoo: Zoo, tmp_path: Path, patch: dict[str, object], message: str
) -> None:
    target = tmp_path / "z"
    shutil.copytree(small_zoo.path, target)
    doc = json.loads((target / ZOO_FILE).read_text())
    doc.update(patch)
    (target / ZOO_FILE).write_text(json.dumps(doc))
    with pytest.raises(ZooError, match=message):
        load_zoo(target)


def test_save_zoo_round_trip_and_rejects_nan(small_zoo: Zoo, tmp_path: Path) -> None:
    from models.zoo.store import save_zoo

    target = tmp_path / "z"
    shutil.copytree(small_zoo.path, target)
    zoo = load_zoo(target)
    zoo.checkpoints[0] = ZooCheckpoint(file=zoo.checkpoints[0].file, accuracy=0.5, run=7)
    save_zoo(zoo)
    again = load_zoo(target)
    assert again.checkpoints[0] == ZooCheckpoint(zoo.checkpoints[0].file, 0.5, 7, None)
    assert again.provenance == small_zoo.provenance
    zoo.checkpoints[0] = ZooCheckpoint(file=zoo.checkpoints[0].file, accuracy=float("nan"))
    with pytest.raises(ZooError):
        save_zoo(zoo)
    assert load_zoo(target).checkpoints[0].accuracy == 0.5  # the old zoo.json is untouched


# ---------------------------------------------------------------------------- build_module


def test_build_module_success() -> None:
    m = build_module({"builder": "models.zoo.digits:mlp", "kwargs": {"hidden": 8}})
    assert _num_params(m) == 64 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("models.zoo.digits:mlp", "must be a mapping"),
        ({}, "'builder'"),
        ({"builder": "models.zoo.digits.mlp"}, "module:function"),
        ({"builder": ":mlp"}, "both a module and a function"),
        ({"builder": "no_such_pkg_xyz:f"}, "cannot import module 'no_such_pkg_xyz'"),
        ({"builder": "models.zoo.digits:nope"}, "no callable 'nope'"),
        ({"builder": "models.zoo.digits:DATASET_NAME"}, "no callable"),
        ({"builder": "models.zoo.digits:mlp", "kwargs": {"width": 3}}, "rejected kwargs"),
        ({"builder": "models.zoo.digits:mlp", "kwargs": [1]}, "'kwargs' must be a mapping"),
        ({"builder": "models.zoo.digits:load_digits_split"}, "expected an nn.Module"),
    ],
)
def test_build_module_errors(spec: object, message: str) -> None:
    # Trusted, so that the errors after the trust check show (tests/models/test_trust.py
    # covers refusals).
    with pytest.raises(ZooError, match=message):
        build_module(spec, trust_builders=["models.zoo.digits", "no_such_pkg_xyz"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- import


def _mlp_state(seed: int, hidden: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return digits.mlp(hidden=hidden).state_dict()


def test_import_pt_and_safetensors(tmp_path: Path, split: digits.DigitsSplit) -> None:
    src = tmp_path / "src"
    src.mkdir()
    states = [_mlp_state(i) for i in range(3)]
    torch.save(states[0], src / "a.pt")
    torch.save({"state_dict": states[1], "epoch": 3}, src / "b.pth")
    save_file(states[2], src / "c.safetensors")
    (src / "notes.txt").write_text("ignored")
    calls: list[nn.Module] = []

    def evaluate(m: nn.Module) -> float:
        calls.append(m)
        return digits.accuracy(m, split.x_test, split.y_test)

    zoo = import_zoo(
        src, tmp_path / "zoo", "models.zoo.digits:mlp", {"hidden": 16}, evaluate=evaluate
    )
    assert zoo.architecture == {
        "name": "zoo",
        "builder": "models.zoo.digits:mlp",
        "kwargs": {"hidden": 16},
    }
    assert zoo.run_ids() == [0, 1, 2] and len(calls) == 3
    assert all(f.suffix == ".safetensors" for f in zoo.files())
    for got, want in zip(zoo.state_dicts(), states, strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        m = digits.mlp(hidden=16)
        m.load_state_dict(got, strict=True)
    first = zoo.state_dicts()[0]
    m = digits.mlp(hidden=16)
    m.load_state_dict(first)
    assert zoo.checkpoints[0].accuracy == digits.accuracy(m, split.x_test, split.y_test)


def test_import_rejects_non_state_dicts_and_mismatches(tmp_path: Path) -> None:
    def attempt(files: dict[str, object], hidden: int = 16) -> None:
        src = tmp_path / f"src{len(list(tmp_path.iterdir()))}"
        src.mkdir()
        for name, obj in files.items():
            if name.endswith(".safetensors"):
                save_file(obj, src / name)  # type: ignore[arg-type]
            else:
                torch.save(obj, src / name)
        import_zoo(
            src, src.with_name(src.name + "-out"), "models.zoo.digits:mlp", {"hidden": hidden}
        )

    with pytest.raises(ZooError, match=r"bad\.pt: entry 'epoch' holds a int"):
        attempt({"good.pt": _mlp_state(0), "bad.pt": {**_mlp_state(1), "epoch": 3}})
    with pytest.raises(ZooError, match=r"list\.pt holds a list"):
        attempt({"list.pt": [torch.zeros(2)]})
    with pytest.raises(ZooError, match=r"obj\.pt cannot be loaded with torch\.load\(weights_only"):
        attempt({"obj.pt": digits.mlp(hidden=16)})  # a pickled module, not a state dict
    with pytest.raises(ZooError, match=r"wide\.safetensors does not fit"):
        attempt({"ok.safetensors": _mlp_state(0), "wide.safetensors": _mlp_state(1, hidden=32)})
    with pytest.raises(ZooError, match=r"no \.safetensors, \.pt, \.pth files"):
        attempt({})
    # Nothing was published for any failed import.
    assert not [p for p in tmp_path.iterdir() if p.name.endswith("-out")]


def test_import_refuses_in_place(tmp_path: Path) -> None:
    save_file(_mlp_state(0), tmp_path / "a.safetensors")
    with pytest.raises(ZooError, match="must differ"):
        import_zoo(tmp_path, tmp_path, "models.zoo.digits:mlp", {"hidden": 16}, overwrite=True)


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpg")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_cli_build_and_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(digits, "TrainingRecipe", partial(digits.TrainingRecipe, epochs=1))
    out = tmp_path / "z"
    argv = ["zoo", "build", "digits-mlp", "--out", str(out), "--num-checkpoints", "4"]
    assert _run(*argv, "--runs", "2", "--seed", "5", "--quiet") == 0
    zoo = load_zoo(out)
    assert len(zoo) == 4 and zoo.run_ids() == [0, 0, 1, 1] and zoo.provenance["seed"] == 5
    assert "4 from 2 run(s)" in capsys.readouterr().out
    assert _run(*argv, "--quiet") == 1
    assert "--overwrite" in capsys.readouterr().err

    assert _run("zoo", "show", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    accs = [a for a in zoo.accuracies() if a is not None]
    assert summary["num_checkpoints"] == 4 and summary["num_runs"] == 2
    assert summary["num_values"] == _num_params(digits.mlp())
    assert summary["accuracy"]["min"] == min(accs) and summary["accuracy"]["max"] == max(accs)
    assert _run("zoo", "show", str(out)) == 0
    assert "digits-mlp" in capsys.readouterr().out
    assert _run("zoo", "show", str(tmp_path / "missing")) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        torch.save(_mlp_state(i, hidden=8), src / f"m{i}.pt")
    out = tmp_path / "zoo"
    base = ["zoo", "import", str(src), "--out", str(out), "--architecture", "models.zoo.digits:mlp"]
    assert _run(*base, "--kwargs", "{hidden: 8}") == 1
    assert "--kwargs is not valid JSON" in capsys.readouterr().err
    assert _run(*base) == 1  # default hidden=128 does not fit
    assert "m0.pt does not fit" in capsys.readouterr().err
    assert _run(*base, "--kwargs", '{"hidden": 8}', "--evaluate", "digits", "--name", "tiny") == 0
    zoo = load_zoo(out)
    assert zoo.architecture is not None and zoo.architecture["name"] == "tiny"
    assert zoo.dataset is not None and zoo.dataset["name"] == "sklearn-digits"
    assert all(a is not None and 0.0 <= a <= 1.0 for a in zoo.accuracies())


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    for sub, flag in [
        ("build", "--num-checkpoints"),
        ("import", "--architecture"),
        ("show", "--json"),
    ]:
        with pytest.raises(SystemExit) as e:
            _parser().parse_args(["zoo", sub, "--help"])
        assert e.value.code == 0
        assert flag in capsys.readouterr().out
