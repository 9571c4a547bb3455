"""`rpg plan`'s time and capacity, and `rpg train`'s check of the plan before it builds anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.cli.plan import make_plan
from models.config import BackboneConfig, DenoiserConfig, RPGConfig, preset_for
from models.plan import Workload
from models.plan_budget import capacity, denoiser_token_flops, train_step_flops
from models.rpg import RPGModel
from models.training import TrainConfig
from service.cli import main as rpg

SMALL = ["--token-size", "256", "--steps", "1", "--save-every", "0", "--no-progress"]


def _workload(config: RPGConfig, length: int, **kw: object) -> Workload:
    base: dict[str, object] = {
        "num_checkpoints": 4, "num_tokens": length, "config": config, "batch_size": 2,
        "micro_batch": 2, "diffusion_batch": 24, "checkpoint_chunk": None, "ema": False,
        "resident": True, "sample_steps": 8,
    }  # fmt: skip
    return Workload(**(base | kw))  # type: ignore[arg-type]


def test_step_flops_are_what_pytorch_counts() -> None:
    """The plan's FLOPs per step, part by part, against PyTorch's own count of a real
    forward and backward (matmuls, convolutions) on the same shapes."""
    torch.manual_seed(0)
    config = RPGConfig(
        token_size=32,
        mean_head=True,
        backbone=BackboneConfig(d_model=64, options={"d_state": 16}),
        denoiser=DenoiserConfig(channels=(1, 4, 8, 4, 1), cond_projection="shared"),
    )
    length = 96
    positions = torch.stack([torch.zeros(length, dtype=torch.long), torch.arange(length)], 1)
    model = RPGModel(config, positions)
    params = sum(p.numel() for p in model.backbone.parameters())
    planned = train_step_flops(_workload(config, length), params)
    counter = FlopCounterMode(display=False)
    with counter:
        x = model._inputs(torch.zeros(2, dtype=torch.long), None, 0, length)  # (2, L, D)
        model.backbone(x).square().mean().backward()
    counts = counter.get_flop_counts()["Global"]
    # FlopCounterMode counts the backward of Mamba2's depthwise conv1d as if it were dense
    # (channels x the forward); the real backward of a depthwise conv is twice its forward.
    conv = torch.ops.aten.convolution
    dense = counts.pop(torch.ops.aten.convolution_backward) - 2 * counts[conv]
    assert dense > 10 * counts[conv]  # the miscount this corrects
    assert planned["backbone"] == pytest.approx(sum(counts.values()) + 2 * counts[conv], rel=0.15)
    counter = FlopCounterMode(display=False)
    with counter:
        noisy, cond = torch.randn(24, 32), torch.randn(24, 64)
        model.denoiser(noisy, torch.randint(0, 1000, (24,)), cond).square().mean().backward()
    assert planned["denoiser"] == pytest.approx(counter.get_total_flops(), rel=0.15)
    assert denoiser_token_flops(config, 64) * 3 * 24 == planned["denoiser"]
    # one distinct row: half the backbone's work of two
    one_row = train_step_flops(_workload(config, length, backbone_rows=1), params)
    assert one_row["backbone"] * 2 == planned["backbone"]
    assert one_row["denoiser"] == planned["denoiser"]


def test_capacity_ratio_and_rank() -> None:
    config = RPGConfig(token_size=2048, backbone=BackboneConfig(d_model=768))
    fits = capacity(config, 11_000_000, 1_100_000, 627)
    assert fits.ratio == pytest.approx(10.0) and (fits.head_rank, fits.needed_rank) == (769, 627)
    assert not fits.short
    narrow = RPGConfig(token_size=2048, backbone=BackboneConfig(d_model=256))
    assert capacity(narrow, 11_000_000, 1_100_000, 627).short  # rank 257 < 627
    assert capacity(config, 1_000_000, 1_100_000, 627).short  # fewer weights than the target


def test_plan_reports_time_capacity_rows_and_warns_on_budget(
    tiny_zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rpg(["plan", str(tiny_zoo), "--json", "--time-budget", "0.001"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train = plan["train"]
    assert plan["preset"] == "tiny" and train["steps"] == 1000
    assert train["backbone_rows"] == 2  # the zoo's two training runs
    assert train["step_seconds"] > 0
    assert train["seconds"] == pytest.approx(train["step_seconds"] * 1000)
    assert train["flops_per_step"]["total"] == sum(
        v for k, v in train["flops_per_step"].items() if k != "total"
    )
    assert plan["capacity"]["ratio"] == pytest.approx(
        plan["generator_parameters"] / plan["zoo"]["num_parameters"]
    )
    assert not plan["capacity"]["short"]
    assert any(w.startswith("time is short") for w in plan["warnings"])
    assert rpg(["plan", str(tiny_zoo), "--time-budget", "100000"]) == 0
    text = capsys.readouterr().out
    assert "time:" in text and "predicted" in text and "warning" not in text


def test_plan_warns_when_capacity_is_short(tiny_zoo: Path) -> None:
    options = TrainConfig(backbone="lstm", d_model=8, token_size=64, channels=(1, 2, 1))
    plan = make_plan(tiny_zoo, options=options)
    assert plan["capacity"]["short"] and plan["capacity"]["head_rank"] == 9
    assert any(w.startswith("capacity is short") for w in plan["warnings"])


def test_train_refuses_a_run_that_does_not_fit_and_writes_nothing(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g"
    assert rpg(["train", str(tiny_zoo), "--out", str(out), "--device-memory", "0.01", *SMALL]) == 1
    err = capsys.readouterr().err
    assert "refusing to train" in err and "--ignore-plan" in err and "try --" in err
    assert not out.exists()
    args = ["train", str(tiny_zoo), "--out", str(out), "--device-memory", "0.01", "--ignore-plan"]
    assert rpg([*args, *SMALL]) == 0
    assert (out / "model.safetensors").is_file()
    assert "plan: preset tiny" in capsys.readouterr().out


def test_preset_by_target_size() -> None:
    """Targets under 50K keep tiny; 50K-2M get compact and 2M-20M medium (CPU-sized
    generators); the paper's rows above (small only when asked for)."""
    assert [preset_for(n) for n in (9_610, 49_999)] == ["tiny", "tiny"]
    assert [preset_for(n) for n in (50_000, 1_097_390, 1_999_999)] == ["compact"] * 3
    assert [preset_for(n) for n in (2_000_000, 11_182_410, 19_999_999)] == ["medium"] * 3
    assert preset_for(20_000_000) == "base"


def test_resnet18_plan_fits_this_machine_with_capacity(tmp_path: Path) -> None:
    """A ResNet-18 zoo (11.2M parameters) gets the medium preset by default: it fits a 24 GiB
    CPU, its prototypes' rank covers the tokens and its generator outnumbers the target,
    which the compact preset's does not (only the shapes matter to a plan: zero weights)."""
    from safetensors.torch import save_file

    from models.zoo.build import DIGITS_ARCHITECTURES
    from models.zoo.resnet import resnet18
    from models.zoo.store import Zoo, ZooCheckpoint, save_zoo

    architecture = DIGITS_ARCHITECTURES["digits-resnet18"]
    with torch.device("meta"):
        state = resnet18(**architecture["kwargs"]).state_dict()
    tensors = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
    save_file(tensors, tmp_path / "ckpt_0.safetensors")
    checkpoint = ZooCheckpoint(file="ckpt_0.safetensors", accuracy=0.99)
    save_zoo(Zoo(tmp_path, architecture, None, {"kind": "none"}, [checkpoint]))
    plan = make_plan(tmp_path, device_memory=23 * 2**30)
    assert plan["preset"] == "medium" and plan["zoo"]["num_parameters"] == 11_182_410
    assert plan["device"]["train_fits"] and not plan["capacity"]["short"]
    assert plan["capacity"]["head_rank"] >= plan["capacity"]["needed_rank"]
    compact = make_plan(tmp_path, preset="compact", device_memory=23 * 2**30)
    assert compact["capacity"]["short"]
    # the backbone's work follows the token count: 8x longer tokens than compact's
    assert (
        plan["train"]["flops_per_step"]["total"] < compact["train"]["flops_per_step"]["total"] / 2
    )


def test_bench_step_time_measures_the_parts_the_plan_counts(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "r.json"
    assert rpg(["bench", "step-time", str(tiny_zoo), "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["preset"] == "tiny" and report["predicted"]["step_seconds"] > 0
    parts = report["parts"]
    assert parts["backbone_s"] > 0 and parts["denoiser_s"] > 0
    assert parts["backbone_flops_per_s"] == pytest.approx(
        report["predicted"]["flops_per_step"]["backbone"] / parts["backbone_s"]
    )


def test_mlp_denoiser_training_flops_are_what_pytorch_counts() -> None:
    """In training every token has its own time and prototype: the mlp's token path, prototype
    terms and time terms all run per token."""
    config = RPGConfig(
        token_size=64,
        mean_head=True,
        backbone=BackboneConfig(d_model=64, options={"d_state": 16}),
        denoiser=DenoiserConfig(kind="mlp", width=32, depth=2, mlp_ratio=2),
    )
    positions = torch.stack([torch.zeros(10, dtype=torch.long), torch.arange(10)], 1)
    model = RPGModel(config, positions)
    planned = train_step_flops(_workload(config, 10), 1)["denoiser"]
    counter = FlopCounterMode(display=False)
    with counter:
        x, cond, t = torch.randn(24, 64), torch.randn(24, 64), torch.rand(24) * 1000
        model.denoiser(x, t, cond).square().mean().backward()
    assert planned == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_plan_of_an_adapter_zoo(tiny_adapter_zoo: Path) -> None:
    """`rpg train` plans every zoo it trains on: adapter zoos too."""
    plan = make_plan(tiny_adapter_zoo)
    assert plan["device"]["train_fits"] and plan["train"]["step_seconds"] > 0
