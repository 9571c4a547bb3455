"""`rpg demo`: bundle selection (fast), and the whole demo in a subprocess (slow): it prints
the table, and leaves no process behind, also when interrupted."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from service.cli import build_parser
from service.demo import DEMO_TRAIN_CONFIG, QUICK_TRAIN_CONFIG, DemoError, Stages, prepare_bundle
from worker.redis_embedded import ensure_embedded_redis, socket_path, stop_embedded_redis

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *argv])


def test_the_quick_recipe_is_smaller_than_the_demo_recipe() -> None:
    assert QUICK_TRAIN_CONFIG.steps is not None and DEMO_TRAIN_CONFIG.steps is not None
    assert QUICK_TRAIN_CONFIG.steps < DEMO_TRAIN_CONFIG.steps
    assert QUICK_TRAIN_CONFIG.d_model is not None


def test_bundle_choice_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stages = Stages()
    with pytest.raises(DemoError, match=r"no config\.json"):
        prepare_bundle(parse("--bundle", str(tmp_path)), tmp_path, stages)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    assert prepare_bundle(parse("--bundle", str(tmp_path / "mine")), tmp_path, stages) == (
        tmp_path / "mine"
    )
    # An earlier run's bundle is reused, each recipe under its own name.
    for name, argv in (
        ("bundle", ()),
        ("bundle-quick", ("--quick",)),
        ("bundle-7steps", ("--steps", "7")),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        assert prepare_bundle(parse(*argv), tmp_path, stages) == tmp_path / name
    assert stages.timings == []  # nothing was built
    assert "note" not in capsys.readouterr().out

    # A bundle trained with another recipe is still reused, with a note saying so.
    options = {**json.loads(json.dumps(asdict(DEMO_TRAIN_CONFIG))), "steps": 3, "lr": 0.5}
    (tmp_path / "bundle" / "config.json").write_text(json.dumps({"training": {"options": options}}))
    assert prepare_bundle(parse(), tmp_path, stages) == tmp_path / "bundle"
    assert "other steps, lr than the current recipe" in capsys.readouterr().out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a daemon that exited stays a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def started_pids(output: str) -> dict[str, int]:
    found = re.findall(r"(gateway|worker|redis) started \(pid (\d+)", output)
    return {name: int(pid) for name, pid in found}


def demo_command(bundle: Path, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "service.cli", "demo", "--quick", "--bundle", str(bundle),
        "--data-dir", str(data_dir), "--device", "cpu", "-n", "3",
    ]  # fmt: skip


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_everything(tiny_bundle: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        demo_command(tiny_bundle, data_dir),
        cwd=tmp_path,  # not the repo: the demo must find its own code
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RPG_API_KEY_HASHES": "x:" + "0" * 64},  # must not leak into it
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert len(re.findall(r"^sample_\d{3}\.safetensors +\d+\.\d\d%$", out, re.M)) == 3
    assert re.search(r"^generated +3 +[\d.]+% +[\d.]+% +[\d.]+%$", out, re.M)
    assert re.search(r"^training zoo +6 +[\d.]+%", out, re.M)  # tiny_zoo has 6 checkpoints
    assert re.search(r"^timings: .*generate [\d.]+ s.*; total [\d.]+ s$", out, re.M)
    pids = started_pids(out)
    assert set(pids) == {"gateway", "worker", "redis"}
    assert not any(alive(pid) for pid in pids.values()), pids
    assert not socket_path(data_dir).exists() or not _answers(data_dir)
    (job_dir,) = (data_dir / "outputs").iterdir()
    assert len(list(job_dir.glob("sample_*.safetensors"))) == 3


def _answers(data_dir: Path) -> bool:
    import redis

    client = redis.Redis(unix_socket_path=str(socket_path(data_dir)), socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.mark.slow
def test_interrupted_demo_stops_what_it_started_and_keeps_a_running_redis(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo"
    ensure_embedded_redis(data_dir)  # already running: the demo must leave it alone
    # A copy whose default sampler is DDPM (all 1,000 steps): the job runs for seconds, so
    # the interrupt lands while it runs even on a loaded machine (with the bundle's 8-step
    # default the job took 0.3 s, and twice in full-suite runs the demo finished first).
    slow = tmp_path / "slow-bundle"
    shutil.copytree(tiny_bundle, slow)
    config = json.loads((slow / "config.json").read_text())
    config["defaults"] = {"sampler": "ddpm", "steps": 1000}
    (slow / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        demo_command(slow, data_dir),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.strip().startswith("job "):  # submitted: gateway and worker are up
                process.send_signal(signal.SIGINT)
                break
        rest, _ = process.communicate(timeout=60)
        output = "".join(seen) + rest
        assert process.returncode == 130, output
        assert "interrupted" in output
        pids = started_pids(output)
        assert set(pids) == {"gateway", "worker"}, output
        assert not any(alive(pid) for pid in pids.values())
        assert "redis already running" in output and _answers(data_dir)
    finally:
        if process.poll() is None:
            process.kill()
        stop_embedded_redis(data_dir)
