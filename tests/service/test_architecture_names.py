"""`GET /architectures` says where each generator's name comes from and how to choose another:
the issue's case (`rpg zoo import ... --out zoo`, `rpg train zoo --out generators/page-mlp`,
served as "zoo") end to end through the real commands and a real gateway, and the naming
rules on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from models.naming import choose_name, describe_origin, name_origin
from service.cli import main
from tests.service.conftest import GatewayPool, write_config_bundle


def test_choose_name_and_read_it_back() -> None:
    zoo = Path("/data/zoos/my-zoo")
    assert choose_name("page-mlp", {"name": "digits-mlp"}, zoo) == ("page-mlp", "train --name")
    assert choose_name(None, {"name": "digits-mlp"}, zoo) == ("digits-mlp", "zoo architecture")
    assert choose_name(None, None, zoo) == ("my-zoo", "zoo folder")
    assert name_origin({"name": "x", "training": {"options": {"name": "x"}}}) == "train --name"
    assert name_origin({"name": "x", "architecture": {"name": "x"}}) == "zoo architecture"
    assert name_origin({"name": "z", "zoo": {"path": "/a/z"}, "architecture": None}) == "zoo folder"
    assert name_origin({"name": "edited", "architecture": {"name": "x"}}) == "config.json"
    for origin in ("train --name", "zoo architecture", "zoo folder", "config.json"):
        assert "rpg train ZOO --out DIR --name NAME" in describe_origin(origin)  # type: ignore[arg-type]


def test_each_entry_names_its_bundle_and_origin(redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "generators"
    write_config_bundle(folder / "page-mlp", name="digits-mlp", condition={"kind": "none"})
    write_config_bundle(folder / "renamed", name="mine", condition={"kind": "none"})
    pool = GatewayPool(redis_url, [folder], tmp_path / "data")
    try:
        gateway = pool.start()
        listing = gateway.http.get("/architectures").json()["architectures"]
        sources = {entry["name"]: entry["name_source"] for entry in listing}
        assert sources["digits-mlp"]["origin"] == "zoo architecture"
        assert sources["digits-mlp"]["bundle"] == "page-mlp"  # a folder name, not a path
        assert sources["mine"] == {
            "origin": "config.json",
            "bundle": "renamed",
            "detail": describe_origin("config.json"),
        }
        assert str(tmp_path) not in json.dumps(listing)  # no server paths leak
    finally:
        pool.close()


@pytest.mark.slow
def test_the_issues_case_end_to_end(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.zoo.digits import mlp

    source = tmp_path / "checkpoints"
    source.mkdir()
    for seed in range(3):
        save_file(dict(mlp().state_dict()), source / f"ckpt_{seed}.safetensors")
    zoo, generators = tmp_path / "zoo", tmp_path / "generators"
    assert (
        main(
            [
                "zoo",
                "import",
                str(source),
                "--out",
                str(zoo),
                "--architecture",
                "models.zoo.digits:mlp",
            ]
        )
        == 0
    )
    small = ["--steps", "2", "--no-progress", "--save-every", "0"]
    assert main(["train", str(zoo), "--out", str(generators / "page-mlp"), *small]) == 0
    assert "served as 'zoo': The architecture name of the zoo" in capsys.readouterr().out
    named = ["--name", "page-mlp", *small]
    assert main(["train", str(zoo), "--out", str(generators / "second"), *named]) == 0
    assert "served as 'page-mlp': Chosen when the bundle was trained" in capsys.readouterr().out

    pool = GatewayPool(redis_url, [generators], tmp_path / "data")
    try:
        listing = pool.start().http.get("/architectures").json()["architectures"]
    finally:
        pool.close()
    sources = {entry["name"]: entry["name_source"] for entry in listing}
    assert sources["zoo"]["origin"] == "zoo architecture" and sources["zoo"]["bundle"] == "page-mlp"
    assert (
        "`rpg zoo import` names a zoo's architecture after its --out folder"
        in sources["zoo"]["detail"]
    )
    assert (
        sources["page-mlp"]["origin"] == "train --name"
        and sources["page-mlp"]["bundle"] == "second"
    )
