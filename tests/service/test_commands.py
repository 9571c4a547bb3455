"""`rpg serve` and `rpg keys create` on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_keys_create_rejects_a_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from service.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["keys", "create", "no:colons"])
    assert args.func(args) == 2
    assert "invalid API key name" in capsys.readouterr().err


@pytest.mark.slow
def test_rpg_serve_runs_a_gateway(
    redis_url: str, config_bundles: list[Path], tmp_path: Path
) -> None:
    from service.auth import new_key

    key, entry = new_key("ops")
    port = free_port()
    env = {**os.environ, "RPG_API_KEY_HASHES": entry, "RPG_SIGNING_SECRET": "s" * 32}
    command = [
        sys.executable, "-m", "service.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--redis-url", redis_url,
        "--data-dir", str(tmp_path), "--generators", *map(str, config_bundles),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "rpg serve did not start"
            time.sleep(0.1)
        assert httpx.get(f"{url}/architectures").status_code == 401
        listed = httpx.get(f"{url}/architectures", headers={"Authorization": f"Bearer {key}"})
        assert sorted(a["name"] for a in listed.json()["architectures"]) == [
            "digits-cond",
            "digits-mlp",
        ]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "API keys: required" in output
    assert "digits-cond, digits-mlp" in output
