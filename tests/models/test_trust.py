"""No code runs because a file says so: builders named in zoos and bundles need trust.

The attacks are the ones a shared zoo or Hub bundle could carry: a zoo.json or config.json
whose architecture "builder" is subprocess:getoutput, os:system, builtins:eval or any other
importable callable. Each is refused, its module never imported, unless the person running the
command trusts it (--trust-builder, RPG_TRUSTED_BUILDERS, trust_builders=...).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from models.generator import Generator
from models.zoo import digits
from models.zoo.architecture import (
    PROJECT_BUILDERS,
    TRUST_ENV,
    build_module,
    is_trusted,
    parse_trust,
    trusted_builders,
)
from models.zoo.build import import_zoo
from models.zoo.errors import UntrustedBuilderError, ZooError
from models.zoo.store import ZOO_FILE, load_zoo
from service.cli import main as rpg

# A third-party builder module whose import leaves a mark: refusing must not import it.
THIRD_PARTY = """
from pathlib import Path
Path({marker!r}).write_text("imported")

from models.zoo.digits import mlp


def net(hidden=8, **kwargs):
    return mlp(hidden=hidden, **kwargs)
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module `thirdparty_nets_<id>` on sys.path; returns (module name, import marker)."""
    name = f"thirdparty_nets_{tmp_path.name.replace('-', '_')}"
    pkg = tmp_path / "site"
    pkg.mkdir()
    marker = tmp_path / "imported.txt"
    (pkg / f"{name}.py").write_text(THIRD_PARTY.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(pkg))
    yield name, marker
    sys.modules.pop(name, None)


def test_project_builders_build_by_default() -> None:
    for builder in PROJECT_BUILDERS:
        kwargs = {"width": 4} if builder.endswith("resnet18") else {}
        module = build_module({"builder": builder, "kwargs": kwargs})
        assert isinstance(module, torch.nn.Module)


@pytest.mark.parametrize(
    ("builder", "kwargs"),
    [
        ("subprocess:getoutput", {"cmd": "touch PWNED"}),
        ("os:system", {"command": "touch PWNED"}),
        ("builtins:eval", {"source": "__import__('os').system('touch PWNED')"}),
        ("collections:OrderedDict", {}),
        # Project modules are not builders either: only the registry's names are.
        ("models.zoo.store:staged_directory", {"out": "x"}),
    ],
)
def test_untrusted_builders_are_refused(
    builder: str, kwargs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = builder.partition(":")[0]
    with pytest.raises(UntrustedBuilderError) as caught:
        build_module({"builder": builder, "kwargs": kwargs})
    assert caught.value.builder == builder
    message = str(caught.value)
    assert repr(builder) in message and f"--trust-builder {module}" in message
    assert TRUST_ENV in message
    assert not (tmp_path / "PWNED").exists()


def test_third_party_builder_is_not_imported_unless_trusted(third_party: tuple[str, Path]) -> None:
    name, marker = third_party
    spec = {"builder": f"{name}:net", "kwargs": {"hidden": 8}}
    with pytest.raises(UntrustedBuilderError, match=f"--trust-builder {name}"):
        build_module(spec)
    assert not marker.exists() and name not in sys.modules
    # A module entry, or the one function, trusts it; a neighbour's name does not.
    with pytest.raises(UntrustedBuilderError):
        build_module(spec, trust_builders=[f"{name}_other", f"{name}:other"])
    assert not marker.exists()
    for trust in ([name], [f"{name}:net"]):
        module = build_module(spec, trust_builders=trust)
        assert sum(p.numel() for p in module.parameters()) == 64 * 8 + 8 + 8 * 10 + 10
    assert marker.exists()


def test_trust_entries() -> None:
    assert parse_trust("a.b, c:d  e") == ("a.b", "c:d", "e")
    assert parse_trust(None) == ()
    for bad in ("a b:c:d", "1abc", "a.:b", "a;rm -rf"):
        with pytest.raises(ValueError):
            parse_trust([bad])
    assert is_trusted("pkg.nets:resnet", ["pkg"])
    assert is_trusted("pkg.nets:resnet", ["pkg.nets:resnet"])
    assert not is_trusted("pkg.nets:resnet", ["pkg.nets:other"])
    assert not is_trusted("pkgx.nets:resnet", ["pkg"])
    assert trusted_builders(["a"], {TRUST_ENV: "b,a"}) == ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": float("nan")}, "finite"),
        ({"hidden": object()}, "JSON values only"),
        ({"hidden": {1: 2}}, "non-string key"),
        ({"deep": json.loads("[" * 40 + "]" * 40)}, "deeper than"),
    ],
)
def test_builder_kwargs_are_json_only(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ZooError, match=message):
        build_module({"builder": "models.zoo.digits:mlp", "kwargs": kwargs})


@pytest.mark.parametrize("builder", ["os:system ", "os.path:join.__call__", "a-b:c", "os:"])
def test_malformed_builder_names(builder: str) -> None:
    with pytest.raises(ZooError, match="builder"):
        build_module({"builder": builder})


def _hostile_zoo(tiny_zoo: Path, out: Path, builder: str, kwargs: dict[str, object]) -> Path:
    shutil.copytree(tiny_zoo, out)
    doc = json.loads((out / ZOO_FILE).read_text())
    doc["architecture"] = {"name": "x", "builder": builder, "kwargs": kwargs}
    (out / ZOO_FILE).write_text(json.dumps(doc))
    return out


def test_rpg_evaluate_runs_no_builder_from_zoo_json(
    tiny_zoo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The attack from the issue: before, the command ran and PWNED appeared."""
    monkeypatch.chdir(tmp_path)
    zoo = _hostile_zoo(tiny_zoo, tmp_path / "zoo", "subprocess:getoutput", {"cmd": "touch PWNED"})
    generated = tmp_path / "gen"
    generated.mkdir()
    shutil.copy(tiny_zoo / "ckpt_000.safetensors", generated / "a.safetensors")
    code = rpg(["evaluate", "--zoo", str(zoo), "--generated", str(generated)])
    assert code != 0
    err = capsys.readouterr().err
    assert "'subprocess:getoutput'" in err and "--trust-builder subprocess" in err
    assert "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()


def test_imported_zoo_needs_trust_later(
    tiny_zoo: Path,
    tmp_path: Path,
    third_party: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rpg zoo import --architecture` trusts what was typed for that command only."""
    name, marker = third_party
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        torch.manual_seed(i)
        from safetensors.torch import save_file

        save_file(digits.mlp(hidden=8).state_dict(), str(src / f"m{i}.safetensors"))
    out = str(tmp_path / "z")
    code = rpg(
        [
            "zoo",
            "import",
            str(src),
            "--out",
            out,
            "--architecture",
            f"{name}:net",
            "--kwargs",
            '{"hidden": 8}',
        ]
    )
    assert code == 0 and marker.exists()
    marker.unlink()
    sys.modules.pop(name, None)
    zoo_doc = json.loads((tmp_path / "z" / ZOO_FILE).read_text())
    # Trust is never written into the zoo.
    assert set(zoo_doc) == {
        "format",
        "version",
        "architecture",
        "dataset",
        "condition",
        "checkpoints",
        "provenance",
    }
    assert set(zoo_doc["architecture"]) == {"name", "builder", "kwargs"}
    # A dataset so that evaluation needs the module.
    zoo_doc["dataset"] = digits.dataset_spec(digits.load_digits_split())
    (tmp_path / "z" / ZOO_FILE).write_text(json.dumps(zoo_doc))
    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copy(src / "m0.safetensors", gen / "g.safetensors")
    argv = ["evaluate", "--zoo", str(tmp_path / "z"), "--generated", str(gen)]
    assert rpg(argv) != 0
    assert f"--trust-builder {name}" in capsys.readouterr().err
    assert not marker.exists()
    assert rpg([*argv, "--trust-builder", name]) == 0
    assert marker.exists()
    monkeypatch.setenv(TRUST_ENV, f"other,{name}:net")
    assert rpg(argv) == 0
    # Library calls: load_zoo's argument.
    monkeypatch.delenv(TRUST_ENV)
    with pytest.raises(UntrustedBuilderError):
        load_zoo(tmp_path / "z").build_module()
    assert isinstance(
        load_zoo(tmp_path / "z", trust_builders=[name]).build_module(), torch.nn.Module
    )
    assert import_zoo  # the library path is the same function the command calls


def test_bundle_builders_need_trust(
    tiny_bundle: Path, tmp_path: Path, third_party: tuple[str, Path]
) -> None:
    name, marker = third_party
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    generator = Generator.from_pretrained(bundle)
    assert isinstance(generator.build_module(), torch.nn.Module)  # the project's builder
    config = json.loads((bundle / "config.json").read_text())
    kwargs = config["architecture"].get("kwargs", {})
    for builder in ("os:system", f"{name}:net"):
        config["architecture"] = {"name": "x", "builder": builder, "kwargs": kwargs}
        (bundle / "config.json").write_text(json.dumps(config))
        loaded = Generator.from_pretrained(bundle)  # loading runs nothing
        with pytest.raises(UntrustedBuilderError):
            loaded.build_module()
    assert not marker.exists()
    trusted = Generator.from_pretrained(bundle, trust_builders=[name])
    state = trusted.sample(1, seed=0, sampler="ddim", steps=2)[0]
    trusted.build_module().load_state_dict(state, strict=True)
