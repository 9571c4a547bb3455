"""Broken bundles among --generators (issue 21): the gateway and a real `rpg worker` process
skip them at start with the reason in their log and in `/readyz`, and serve the others; with
nothing left to serve the gateway is unready and the worker exits with one line, never a
restart loop. Real Redis, real uvicorn, a real worker process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import GatewaySettings
from service.state import build_gateway
from tests.service.conftest import SECRET, GatewayFactory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundles(tiny_bundle: Path, tmp_path: Path) -> dict[str, Path]:
    """A good bundle and three broken ones, each broken in another way."""
    root = tmp_path / "bundles"
    out = {}
    for name in ("good", "lying", "changed", "not-json"):
        out[name] = root / name
        shutil.copytree(tiny_bundle, out[name], ignore=shutil.ignore_patterns("training_state*"))
        config = json.loads((out[name] / "config.json").read_text())
        config["name"] = name
        if name == "lying":
            config["model"]["backbone"]["d_model"] = 8000
        (out[name] / "config.json").write_text(json.dumps(config))
    # Same header, one bit of the data flipped: only the sha256 (checked on load) tells.
    weights = bytearray((out["changed"] / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (out["changed"] / "model.safetensors").write_bytes(bytes(weights))
    (out["not-json"] / "config.json").write_text('{"format": "rpg-generator", ')
    return out


def test_gateway_serves_the_good_bundles_and_lists_the_skipped(
    gateway_factory: GatewayFactory, bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    entries = [str(bundles[n]) for n in ("good", "lying", "not-json")] + ["/nowhere/bundle"]
    with caplog.at_level(logging.ERROR, logger="service.state"):
        gateway = gateway_factory(generators=entries)
    names = [a["name"] for a in gateway.http.get("/architectures").json()["architectures"]]
    assert names == ["good"]
    problem = gateway.http.get("/readyz").json()  # no worker yet: unready for that reason
    assert problem["failed"] == ["workers"]
    generators = problem["checks"]["generators"]
    assert generators["served"] == ["good"]
    reasons = {entry["path"]: entry["reason"] for entry in generators["skipped"]}
    assert set(reasons) == {str(bundles["lying"]), str(bundles["not-json"]), "/nowhere/bundle"}
    assert "8000" in reasons[str(bundles["lying"])]
    assert "not valid JSON" in reasons[str(bundles["not-json"])]
    assert "not a directory" in reasons["/nowhere/bundle"]
    logged = caplog.text
    assert all(path in logged for path in reasons)


def test_gateway_with_nothing_servable_is_not_ready(
    gateway_factory: GatewayFactory, bundles: dict[str, Path]
) -> None:
    gateway = gateway_factory(generators=[str(bundles["lying"])])
    response = gateway.http.get("/readyz")
    assert response.status_code == 503
    problem = response.json()
    assert "generators" in problem["failed"]
    assert "none served, 1 skipped" in problem["detail"]


def test_two_bundles_with_one_name_still_stop_the_gateway(
    bundles: dict[str, Path], redis_url: str, tmp_path: Path
) -> None:
    copy = tmp_path / "twin"
    shutil.copytree(bundles["good"], copy)
    settings = GatewaySettings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        generators=[str(bundles["good"]), str(copy)],
        signing_secret=SECRET,
    )
    with pytest.raises(ValueError, match="two generators are named 'good'"):
        build_gateway(settings)


@pytest.fixture
def worker_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "RPG_REDIS_URL": redis_url,
        "RPG_DATA_DIR": str(tmp_path / "data"),
        "RPG_SIGNING_SECRET": SECRET,
        "RPG_HEARTBEAT_INTERVAL_S": "0.2",
        "RPG_WORKER_CPU_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


def test_worker_skips_what_it_cannot_load_and_readyz_says_so(
    gateway_factory: GatewayFactory, bundles: dict[str, Path], worker_env: dict[str, str]
) -> None:
    served = [str(bundles[n]) for n in ("good", "changed")]
    gateway = gateway_factory(generators=served)
    # The gateway reads config and header only: the changed weights pass there ...
    assert gateway.http.get("/readyz").json()["checks"]["generators"]["skipped"] == []
    log = Path(worker_env["RPG_DATA_DIR"]) / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"],
            cwd=REPO,
            env={**worker_env, "RPG_GENERATORS": ",".join(served)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        # ... the worker checks their sha256 on load, skips that bundle and serves the other.
        deadline = time.monotonic() + 60
        response: httpx.Response = gateway.http.get("/readyz")
        while response.status_code != 200 and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
            response = gateway.http.get("/readyz")
        assert response.status_code == 200, response.text
        skipped = response.json()["checks"]["generators"]["skipped"]
        assert [entry["path"] for entry in skipped] == [str(bundles["changed"])]
        assert "sha256" in skipped[0]["reason"]
        assert "skipped" in log.read_text() and str(bundles["changed"]) in log.read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_worker_with_nothing_to_serve_exits_with_one_line(
    bundles: dict[str, Path], worker_env: dict[str, str]
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--device", "cpu", "--burst"],
        cwd=REPO,
        env={**worker_env, "RPG_GENERATORS": str(bundles["changed"])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    assert "no generators to serve" in run.stderr and "sha256" in run.stderr
