"""Generated adapters: one PEFT folder per sample that PeftModel.from_pretrained loads with
exactly the keys its config implies, and base + adapter merged with --merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.adapters.merge import merge_adapter, targets_from_keys
from models.adapters.spec import parse_peft_config
from models.generator import Generator
from models.sampling_io import write_samples
from models.zoo import digits
from models.zoo.architecture import build_module


def _samples(
    bundle: Path, out: Path, *, merge: bool = False, n: int = 2
) -> tuple[Generator, list[Path]]:
    generator = Generator.from_pretrained(bundle)
    samples = generator.sample(n, seed=3, sampler="ddim", steps=4)
    paths = write_samples(
        samples, out, generator=generator, seed=3, sampler="ddim", steps=4, merge=merge
    )
    return generator, paths


def test_each_sample_is_a_peft_folder_with_provenance(
    tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    generator, paths = _samples(tiny_adapter_bundle, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "sample_000/adapter_config.json",
        "sample_000/adapter_model.safetensors",
        "sample_001/adapter_config.json",
        "sample_001/adapter_model.safetensors",
    ]
    config = json.loads(paths[0].read_text())
    spec = parse_peft_config(config)
    assert config["peft_type"] == "LORA" and spec.r == 2 and spec.target_modules == ("fc1", "fc2")
    with safe_open(str(paths[1]), framework="pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
    assert meta["adapter"] == "lora" and meta["seed"] == "3" and meta["sample_index"] == "0"
    assert meta["base_sha256"] == generator.config["adapter"]["base"]["sha256"]
    assert keys == {
        f"base_model.model.{m}.lora_{f}.weight" for m in ("fc1", "fc2") for f in ("A", "B")
    }


def test_merge_writes_base_plus_adapter_that_loads_strictly(
    tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    generator, folders = _samples(tiny_adapter_bundle, tmp_path / "folders", n=1)
    _, merged = _samples(tiny_adapter_bundle, tmp_path / "merged", n=1, merge=True)
    assert [p.name for p in merged] == ["sample_000.safetensors"]
    state = load_file(merged[0])
    module = build_module(generator.architecture)
    module.load_state_dict(state, strict=True)
    base = generator.adapter_base().state_dict()
    adapter = load_file(folders[1])
    expected = merge_adapter(
        base, adapter, targets_from_keys(list(adapter), base), generator.adapter_base().spec
    )
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value)
    assert not torch.equal(state["fc1.weight"], base["fc1.weight"])


def test_peft_loads_every_tensor_and_changes_the_outputs(
    tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    from peft.utils import set_peft_model_state_dict

    generator, paths = _samples(tiny_adapter_bundle, tmp_path, n=1)
    folder = paths[0].parent
    base_state = generator.adapter_base().state_dict()
    x = digits.load_digits_split().x_test[:64]

    base_module = build_module(generator.architecture)
    base_module.load_state_dict(base_state, strict=True)
    with torch.no_grad():
        plain = base_module(x)
    model = peft.PeftModel.from_pretrained(base_module, str(folder)).eval()
    # PEFT loads with strict=False and only warns: check the keys ourselves.
    adapter = load_file(folder / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, adapter)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if "lora_" in k] == []
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(adapter) == 4
    for key, value in adapter.items():
        name = key.replace(".weight", ".default.weight")
        torch.testing.assert_close(loaded[name], value)
    with torch.no_grad():
        adapted = model(x)
    assert not torch.allclose(adapted, plain)
    merged = build_module(generator.architecture)
    merged.load_state_dict(
        merge_adapter(
            base_state, adapter, targets_from_keys(list(adapter), base_state),
            generator.adapter_base().spec,
        ),
        strict=True,
    )  # fmt: skip
    # Float32 rounding of two summation orders, relative to the outputs' scale: a barely
    # trained generator's adapter can push logits into the thousands.
    scale = float(adapted.abs().max())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), adapted, atol=1e-5 * max(scale, 1.0), rtol=1e-5)


def test_evaluate_scores_generated_folders_beside_the_zoo_and_the_base(
    tiny_adapter_zoo: Path, tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    from service.cli import main as rpg_main

    _samples(tiny_adapter_bundle, tmp_path / "gen", n=3)
    code = rpg_main(
        ["evaluate", "--zoo", str(tiny_adapter_zoo), "--generated", str(tmp_path / "gen"),
         "--json", str(tmp_path / "report.json")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["name"] for m in report["per_model"]] == ["sample_000", "sample_001", "sample_002"]
    assert report["generated"]["n"] == 3 and report["zoo"]["n"] == 6
    split = digits.load_digits_split()
    base = build_module(Generator.from_pretrained(tiny_adapter_bundle).architecture)
    base.load_state_dict(load_file(tiny_adapter_zoo / "base.safetensors"), strict=True)
    assert report["base"]["accuracy"] == pytest.approx(
        digits.accuracy(base, split.x_test, split.y_test)
    )


def test_conv_adapters_made_by_peft_import_and_merge_as_peft_computes(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from safetensors.torch import save_file

    from models.adapters.zoo_import import import_adapter_zoo
    from models.zoo.store import load_zoo

    torch.manual_seed(0)
    base = digits.cnn()
    base.eval()
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["conv2", "head"])
    models = []
    for i in range(2):
        start = digits.cnn()
        start.load_state_dict(base.state_dict())
        model = peft.get_peft_model(start, config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        model.save_pretrained(str(tmp_path / "src" / f"a{i}"))
        models.append(model.eval())
    import_adapter_zoo(
        tmp_path / "src", tmp_path / "zoo", "models.zoo.digits:cnn", {},
        tmp_path / "base.safetensors",
    )  # fmt: skip
    zoo = load_zoo(tmp_path / "zoo")
    x = digits.load_digits_split().x_test[:32]
    base_state = zoo.adapter_base().state_dict()
    for model, stored in zip(models, zoo.state_dicts(), strict=True):
        merged = build_module(zoo.architecture or {})
        merged.load_state_dict(
            merge_adapter(base_state, stored, targets_from_keys(list(stored), base_state),
                          zoo.adapter_base().spec),
            strict=True,
        )  # fmt: skip
        merged.eval()
        with torch.no_grad():  # the canonical form computes what PEFT's own adapter does
            torch.testing.assert_close(merged(x), model(x), atol=1e-4, rtol=1e-4)
