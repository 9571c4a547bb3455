"""Adapter zoos: PEFT configs we accept and refuse, the canonical form, import, base checks,
and generated PEFT folders (loaded with PEFT itself where it is installed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.adapters.base import AdapterBase
from models.adapters.canonical import canonical_pair
from models.adapters.folder import read_adapter_folder, write_adapter_folder
from models.adapters.spec import AdapterError, LoraSpec, parse_peft_config
from models.adapters.zoo_import import import_adapter_zoo
from models.zoo import digits
from models.zoo.errors import UntrustedBuilderError
from models.zoo.store import ZooError, load_zoo
from tests.conftest import write_adapter_folders

PLAIN = LoraSpec(r=2, lora_alpha=4.0, target_modules=("fc1", "fc2")).to_peft_config()


# ---------------------------------------------------------------------------- configs


def test_plain_lora_config_parses_with_its_scaling() -> None:
    spec = parse_peft_config({**PLAIN, "use_rslora": True, "peft_version": "9.9"})
    assert spec.r == 2 and spec.target_modules == ("fc1", "fc2")
    assert spec.scaling == pytest.approx(4.0 / 2**0.5)
    assert spec.matches("fc1") and spec.matches("block.fc1") and not spec.matches("xfc1")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
        ({"bias": "all"}, "bias"),
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["classifier"]}, "modules_to_save"),
        ({"rank_pattern": {"fc1": 8}}, "rank_pattern"),
        ({"alpha_pattern": {"fc1": 8}}, "alpha_pattern"),
        ({"some_future_option": {"on": True}}, "some_future_option"),
        ({"target_modules": "all-linear"}, "all-linear"),
        ({"r": 0}, "r must be"),
    ],
)
def test_anything_but_plain_lora_is_refused_saying_what_is_supported(
    change: dict[str, object], named: str
) -> None:
    with pytest.raises(AdapterError, match=named) as info:
        parse_peft_config({**PLAIN, **change})
    assert "supported is plain LoRA" in str(info.value)


# ---------------------------------------------------------------------------- canonical form


def test_canonical_form_is_the_same_for_every_equivalent_pair() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 12, generator=g), torch.randn(7, 4, generator=g)
    m = torch.randn(4, 4, generator=g) + 3 * torch.eye(4)  # invertible
    ca, cb = canonical_pair(a, b)
    ca2, cb2 = canonical_pair(torch.linalg.solve(m, a), b @ m)  # (M^-1 A), (B M)
    torch.testing.assert_close(cb @ ca, b @ a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ca2, ca, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cb2, cb, atol=1e-4, rtol=1e-4)
    # balanced factors: the same singular values on both sides, sorted
    norms_b, norms_a = cb.norm(dim=0), ca.norm(dim=1)
    torch.testing.assert_close(norms_b, norms_a, atol=1e-5, rtol=1e-5)
    assert bool((norms_a[:-1] >= norms_a[1:]).all())


def test_canonical_form_of_a_low_rank_or_conv_adapter() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, 3, 3, generator=g)  # Conv2d A: (r, in, kh, kw)
    b = torch.zeros(6, 3, 1, 1)
    b[:, 0, 0, 0] = torch.randn(6, generator=g)  # rank 1 update
    ca, cb = canonical_pair(a, b)
    assert ca.shape == a.shape and cb.shape == b.shape
    torch.testing.assert_close(
        cb.reshape(6, 3) @ ca.reshape(3, -1),
        b.reshape(6, 3) @ a.reshape(3, -1),
        atol=1e-5,
        rtol=1e-5,
    )
    assert float(cb.reshape(6, 3)[:, 1:].abs().max()) < 1e-6  # unused ranks are zero


# ---------------------------------------------------------------------------- import


def _base(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = digits.mlp(hidden=16).state_dict()
    save_file(state, str(path))
    return state


def test_import_records_config_form_and_checked_base(tiny_adapter_zoo: Path) -> None:
    zoo = load_zoo(tiny_adapter_zoo)
    assert zoo.is_adapter_zoo and len(zoo) == 6
    section = zoo.adapter
    assert section is not None and section["form"] == "canonical"
    assert section["peft_config"]["r"] == 2 and section["base"]["weights"] == "base.safetensors"
    base = zoo.adapter_base()
    assert set(base.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(a is not None for a in zoo.accuracies())


def test_import_refuses_adapters_with_different_configs(tmp_path: Path) -> None:
    base = _base(tmp_path / "base.safetensors")
    write_adapter_folders(tmp_path / "src", base, 2, seed=0)
    config = tmp_path / "src" / "adapter_1" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lora_alpha": 16}))
    with pytest.raises(ZooError, match="adapter_0 and adapter_1 have different configs"):
        import_adapter_zoo(
            tmp_path / "src", tmp_path / "zoo", "models.zoo.digits:mlp", {"hidden": 16},
            tmp_path / "base.safetensors",
        )  # fmt: skip
    assert not (tmp_path / "zoo").exists()


def test_import_refuses_missing_or_extra_adapter_tensors(tmp_path: Path) -> None:
    base = _base(tmp_path / "base.safetensors")
    write_adapter_folders(tmp_path / "src", base, 1, seed=0)
    folder = tmp_path / "src" / "adapter_0"
    spec, tensors = read_adapter_folder(folder)
    tensors["base_model.model.fc1.lora_A.default.weight"] = tensors.pop(
        "base_model.model.fc1.lora_A.weight"
    )  # a misnamed key: PEFT would load it silently as nothing
    write_adapter_folder(folder, spec.to_peft_config(), tensors, {})
    with pytest.raises(ZooError, match=r"missing .*fc1.lora_A.weight"):
        import_adapter_zoo(
            tmp_path / "src", tmp_path / "zoo", "models.zoo.digits:mlp", {"hidden": 16},
            tmp_path / "base.safetensors",
        )  # fmt: skip


def test_pickled_adapters_and_links_are_refused_unread(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(PLAIN))
    (folder / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(AdapterError, match=r"never loaded here.*safetensors"):
        read_adapter_folder(folder)
    (folder / "adapter_model.bin").unlink()
    outside = tmp_path / "outside.safetensors"
    save_file({"x": torch.zeros(1)}, str(outside))
    os.symlink(outside, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="not a link"):
        read_adapter_folder(folder)


def test_changed_base_weights_are_refused(tiny_adapter_zoo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "zoo"
    shutil.copytree(tiny_adapter_zoo, copy)
    state = load_file(copy / "base.safetensors")
    state["fc1.bias"] = state["fc1.bias"] + 1
    save_file(state, str(copy / "base.safetensors"))
    with pytest.raises(AdapterError, match=r"sha256 .* was recorded"):
        load_zoo(copy).adapter_base().state_dict()


def test_a_base_builder_from_the_file_runs_only_when_trusted(
    tiny_adapter_zoo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "zoo"
    shutil.copytree(tiny_adapter_zoo, copy)
    doc = json.loads((copy / "zoo.json").read_text())
    doc["adapter"]["base"]["architecture"]["builder"] = "subprocess:getoutput"
    (copy / "zoo.json").write_text(json.dumps(doc))
    with pytest.raises(UntrustedBuilderError):
        load_zoo(copy).adapter_base().build_module()


def test_base_weights_must_be_safetensors(tmp_path: Path) -> None:
    base = _base(tmp_path / "base.safetensors")
    write_adapter_folders(tmp_path / "src", base, 1, seed=0)
    torch.save(base, tmp_path / "base.pt")
    with pytest.raises(ZooError, match=r"must be a \.safetensors file"):
        import_adapter_zoo(
            tmp_path / "src", tmp_path / "zoo", "models.zoo.digits:mlp", {"hidden": 16},
            tmp_path / "base.pt",
        )  # fmt: skip


def test_adapter_base_resolves_relative_weights_inside_the_folder(tiny_adapter_zoo: Path) -> None:
    zoo = load_zoo(tiny_adapter_zoo)
    assert zoo.adapter is not None
    base = AdapterBase(zoo.adapter, tiny_adapter_zoo)
    assert base.weights_path == tiny_adapter_zoo / "base.safetensors"


def test_gateway_client_and_adapter_writing_do_not_import_peft() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import service.app, service.client, models.adapters.samples, "
        "models.adapters.zoo_import, models.sampling_io, worker.jobs; "
        "assert 'peft' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
