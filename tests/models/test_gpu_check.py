"""The GPU acceptance check (models/bench/gpu_check.py, docker/gpu_check.sh), run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bench.gpu_check import compare_weights, main
from models.generator import Generator

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--device",
    "cpu",
    "--zoo-checkpoints",
    "4",
    "--zoo-runs",
    "2",
    "--zoo-epochs",
    "1",
    "--train-steps",
    "4",
    "--d-model",
    "32",
    "--d-state",
    "16",
    "--token-size",
    "256",
    "--channels",
    "1",
    "8",
    "16",
    "8",
    "1",
    "--samples",
    "2",
    "--sample-steps",
    "3",
]


def test_cpu_run_reports_and_agrees_with_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*TINY, "--workdir", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0 and summary["ok"] is True
    assert summary["device"] == "cpu" and summary["zoo"]["checkpoints"] == 4
    assert summary["train"]["steps"] == 4 and summary["train"]["steps_per_s"] > 0
    for dtype in ("float32", "bfloat16"):
        measured = summary["sampling"][dtype]
        assert measured["params_per_s"] > 0 and 0.0 <= measured["mean_accuracy"] <= 1.0
        assert measured["params_per_s"] == pytest.approx(
            2 * summary["sampling"]["num_parameters"] / measured["seconds"], rel=1e-2
        )
    # CPU against CPU from the same noise: the same kernels, so the same bits
    cross = summary["cross_device"]
    assert cross["max_abs_weight_diff"] == 0.0 and cross["max_accuracy_diff"] == 0.0
    assert cross["max_abs_weight"] > 0.0
    assert (tmp_path / "bundle" / "config.json").is_file()
    assert any(line.startswith("sample float32 on cpu") for line in lines[:-1])


def _models(scale: float = 0.0) -> list[dict[str, torch.Tensor]]:
    base = {"w": torch.tensor([[0.5, -2.0], [1.0, 0.25]]), "b": torch.tensor([3.0, 0.0])}
    return [{"w": base["w"] + scale, "b": base["b"].clone()}]


def test_compare_weights_tolerances_are_relative_to_the_largest_weight() -> None:
    close = compare_weights(_models(), _models(2e-4), [0.9], [0.9], weight_tol=1e-4, acc_tol=0.01)
    assert close["passed"]  # 2e-4 <= 1e-4 * 3.0
    assert close["max_abs_weight"] == 3.0
    assert close["max_abs_weight_diff"] == pytest.approx(2e-4, rel=1e-3)
    far = compare_weights(_models(), _models(4e-4), [0.9], [0.9], weight_tol=1e-4, acc_tol=0.01)
    assert not far["passed"]


def test_compare_weights_fails_on_accuracy_and_nan() -> None:
    same = _models()
    acc = compare_weights(same, _models(), [0.90], [0.88], weight_tol=1e-4, acc_tol=0.01)
    assert not acc["passed"] and acc["max_accuracy_diff"] == pytest.approx(0.02)
    broken = _models()
    broken[0]["b"][1] = float("nan")
    nan = compare_weights(same, broken, [0.9], [0.9], weight_tol=1.0, acc_tol=1.0)
    assert not nan["passed"] and not nan["finite"]
    with pytest.raises(ValueError, match="keys differ"):
        compare_weights(same, [{"w": same[0]["w"]}], [0.9], [0.9], weight_tol=1, acc_tol=1)


def test_failed_comparison_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device whose samples drift from the CPU's fails the check (exit 1, ok: false)."""
    import models.bench.gpu_check as gpu_check

    original = gpu_check.sample_from_noise
    calls: list[int] = []

    def drifting(
        generator: Generator, noise: torch.Tensor, ids: torch.Tensor, *, steps: int
    ) -> list[dict[str, torch.Tensor]]:
        samples = original(generator, noise, ids, steps=steps)
        calls.append(1)
        if len(calls) == 2:  # the "device" side of the comparison
            samples = [{k: v + 1.0 for k, v in s.items()} for s in samples]
        return samples

    monkeypatch.setattr(gpu_check, "sample_from_noise", drifting)
    assert main([*TINY, "--workdir", str(tmp_path)]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["cross_device"]["max_abs_weight_diff"] >= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_shell_wrapper_runs_the_module() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "docker" / "gpu_check.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "models.bench.gpu_check" in done.stdout and "--weight-tol" in done.stdout
