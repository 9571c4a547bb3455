"""`rpg plan`: predictions against a measured training run, JSON keys, advice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.cli.plan import make_plan
from service.cli import main as rpg

# Runs `rpg train` as its own child and prints that child's peak RSS (KiB on Linux), so the
# figure is the training process alone, not whatever else this test process has run.
_MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_predicted_training_peak_is_within_30_percent_of_measured(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "service.cli", "train", str(tiny_zoo), "--out"]
    cmd += [str(tmp_path / "g"), "--preset", "tiny", "--steps", "2", "--save-every", "0"]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd, "--no-progress"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    measured = int(out.stdout.split()[-1]) * 1024
    predicted = make_plan(tiny_zoo, preset="tiny")["train"]["peak_bytes"]
    assert 0.7 <= predicted / measured <= 1.3, (predicted, measured)


def test_predicted_sampling_peak_is_within_30_percent_of_measured(
    tiny_zoo: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """`rpg sample -n 1` as its own process against the plan's sampling peak for the same
    zoo (at this size the process itself is most of it: the runtime constant is what's held)."""
    cmd = [sys.executable, "-m", "service.cli", "sample", str(tiny_bundle), "--out"]
    cmd += [str(tmp_path / "s"), "-n", "1", "--seed", "0"]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    measured = int(out.stdout.split()[-1]) * 1024
    sample = make_plan(tiny_zoo, preset="tiny")["sample"]
    assert sample["loading_bytes"] == sample["weights_bytes"] > 0
    assert 0.7 <= sample["peak_bytes"] / measured <= 1.3, (sample["peak_bytes"], measured)


def test_plan_json_has_the_documented_keys(
    tiny_zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rpg(["plan", str(tiny_zoo), "--json", "--batch-size", "4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["generator_parameters"] > 0
    assert plan["train"]["peak_bytes"] > plan["train"]["weights_bytes"] > 0
    assert plan["sample"]["peak_bytes"] > 0 and plan["sample"]["flops_per_model"] > 0
    assert plan["train"]["batch_size"] == 4 and plan["device"]["train_fits"] is True


def test_plan_says_what_to_change_when_it_does_not_fit(
    tiny_zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rpg(["plan", str(tiny_zoo), "--device-memory", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "does NOT fit" in text and "--micro-batch" in text and "--ema-decay 0" in text
