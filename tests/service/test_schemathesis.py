"""The OpenAPI document is true: schemathesis, all checks, against a live gateway + worker.

A real uvicorn gateway (serving the tiny trained generator, unconditional, and a config-only
conditional one) and a real `rpg worker` on the test Redis; schemathesis' CLI runs every
phase (examples, coverage, fuzzing, stateful) with every check, a bounded number of
examples per operation, once without API keys and once with them. Any failure (a response
that contradicts the document, a 5xx, a request the document allows but the gateway
refuses or the other way round) fails the test with schemathesis' report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.auth import new_key
from worker.queue import live_workers
from worker.settings import Settings

from .conftest import SECRET, GatewayPool

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 20  # per operation and phase: well under a minute per run on two cores


@pytest.fixture
def worker_process(redis_url: str, tiny_bundle: Path, tmp_path: Path) -> Iterator[None]:
    env = {
        **os.environ,
        "RPG_REDIS_URL": redis_url,
        "RPG_GENERATORS": str(tiny_bundle),
        "RPG_DATA_DIR": str(tmp_path / "data"),
        "RPG_SIGNING_SECRET": SECRET,
        "RPG_HEARTBEAT_INTERVAL_S": "1",
        "RPG_WORKER_CPU_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    connection = redis.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url)
    deadline = time.monotonic() + 90
    while not live_workers(connection, settings=settings):
        assert process.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.1)
    connection.close()
    yield
    process.kill()
    process.wait(timeout=10)


def run_schemathesis(url: str, config: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",  # CPython 3.11's AST parser is not thread-safe under hypothesis' introspection
        "--no-color",
        "--rate-limit",
        "auto",
        "--generation-database",
        "none",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks",
        "PYTHONPATH": str(REPO),
    }
    # Run in the test's directory: schemathesis keeps a cache (.schemathesis/) in its cwd.
    return subprocess.run(
        command,
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("with_keys", [False, True], ids=["no-keys", "keys"])
def test_openapi_document_holds_under_schemathesis(
    with_keys: bool,
    redis_url: str,
    tiny_bundle: Path,
    config_bundles: list[Path],
    tmp_path: Path,
    worker_process: None,
) -> None:
    conditional = config_bundles[1]  # 'digits-cond': queued only (no worker serves it)
    pool = GatewayPool(redis_url, [tiny_bundle, conditional], tmp_path / "data")
    # Bounded waits: `Prefer: wait=N` up to 1 s, and one event read from each event stream
    # (a queued 'digits-cond' job's stream would otherwise stay open until the read timeout).
    overrides: dict[str, object] = {"rate_limit_per_minute": 100_000, "prefer_wait_max_s": 1}
    config = tmp_path / "schemathesis.toml"
    # A listing cursor is an opaque token the API hands out: no schema can tell a real one
    # from a well-formed forgery, which is refused with 422.
    text = (
        "[[operations]]\n"
        'include-path = "/jobs"\n'
        'include-method = "GET"\n'
        "checks.positive_data_acceptance.expected-statuses = "
        '["2XX", "401", "403", "404", "409", "422", "429"]\n'
    )
    if with_keys:
        # As the document's security scheme, so schemathesis also sends requests without it.
        key, entry = new_key("fuzzer")
        overrides["api_key_hashes"] = [entry]
        text = f'[auth.openapi.HTTPBearer]\nbearer = "{key}"\n\n' + text
    config.write_text("max-stream-events = 1\n\n" + text)
    try:
        gateway = pool.start(**overrides)
        result = run_schemathesis(gateway.url, config)
    finally:
        pool.close()
    report = result.stdout[-12000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout, report
    # Only the signed-download route may answer nothing but 401/403 (it needs a signature).
    assert "401 Unauthorized (" not in result.stdout, report
