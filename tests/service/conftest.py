"""Gateway fixtures: a real uvicorn server on a free port (background thread), real Redis, httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.server import server_config
from service.settings import GatewaySettings as Settings
from tests.conftest import free_port

SECRET = "test-signing-secret-0123456789abcdef"


@dataclass
class LiveGateway:
    """A running gateway: its base URL, settings, app, a Redis client and an HTTP client."""

    url: str
    settings: Settings
    app: FastAPI
    redis: redis.Redis
    http: httpx.Client

    def rq_keys(self) -> list[bytes]:
        """RQ's keys in Redis: empty when nothing was ever enqueued."""
        return sorted(self.redis.scan_iter("rq:job:*")) + sorted(self.redis.scan_iter("rq:queue:*"))


class ServerThread:
    """uvicorn serving ``app`` from a daemon thread until `stop`."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        settings = app.state.gateway.settings
        config = server_config(app, settings, host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def write_config_bundle(directory: Path, *, name: str, condition: dict[str, Any]) -> Path:
    """A generator bundle with only config.json, built from the real tokenizer and model config.

    The gateway validates against config.json alone (it never loads weights), so gateway
    tests need no trained generator; never give such a bundle to a worker.
    """
    import torch

    from models.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
    from models.config import RPGConfig
    from models.tokenizer import ParameterTokenizer
    from models.zoo.digits import mlp

    torch.manual_seed(0)
    states = [mlp().state_dict() for _ in range(2)]
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": name,
        "architecture": {"name": "digits-mlp", "builder": "models.zoo.digits:mlp", "kwargs": {}},
        "dataset": {"name": "sklearn-digits"},
        "condition": condition,
        "defaults": {"sampler": "ddim", "steps": 50},
        "zoo": {"path": "zoo", "num_checkpoints": 2, "accuracy_mean": 0.9},
        "tokenizer": ParameterTokenizer.fit(states, token_size=256).to_dict(),
        "model": RPGConfig().to_dict(),
    }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="session")
def config_bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Config-only bundles 'digits-mlp' (unconditional) and 'digits-cond' (10-dim, labels 0-9)."""
    root = tmp_path_factory.mktemp("config-bundles")
    labels = [str(i) for i in range(10)]
    return [
        write_config_bundle(root / "digits-mlp", name="digits-mlp", condition={"kind": "none"}),
        write_config_bundle(
            root / "digits-cond",
            name="digits-cond",
            condition={"kind": "vector", "dim": 10, "labels": labels},
        ),
    ]


GatewayFactory = Callable[..., LiveGateway]


class GatewayPool:
    """Starts gateways on one Redis server; `close` stops them all."""

    def __init__(self, redis_url: str, generators: list[Path], data_dir: Path) -> None:
        self.redis_url = redis_url
        self.generators = generators
        self.data_dir = data_dir
        self.started: list[tuple[ServerThread, LiveGateway]] = []

    def start(self, **overrides: Any) -> LiveGateway:
        port = free_port()
        options: dict[str, Any] = {
            "redis_url": self.redis_url,
            "data_dir": self.data_dir,
            "generators": [str(path) for path in self.generators],
            "host": "127.0.0.1",
            "port": port,
            "signing_secret": SECRET,
            **overrides,
        }
        settings = Settings(**options)
        app = create_app(settings)
        server = ServerThread(app, "127.0.0.1", port)
        server.start()
        url = f"http://127.0.0.1:{port}"
        live = LiveGateway(
            url=url,
            settings=settings,
            app=app,
            redis=redis.Redis.from_url(self.redis_url),
            http=httpx.Client(base_url=url, timeout=30),
        )
        self.started.append((server, live))
        return live

    def close(self) -> None:
        for server, live in self.started:
            live.http.close()
            live.redis.close()
            server.stop()
        self.started.clear()


@pytest.fixture
def gateway_factory(
    redis_url: str, config_bundles: list[Path], tmp_path: Path
) -> Iterator[GatewayFactory]:
    """Start gateways with settings overrides (e.g. ``api_key_hashes=[...]``); stopped after
    the test. Each serves the config-only 'digits-mlp' and 'digits-cond' by default."""
    pool = GatewayPool(redis_url, config_bundles, tmp_path / "data")
    yield pool.start
    pool.close()


@pytest.fixture(scope="module")
def _shared_gateway(
    redis_server: Any, config_bundles: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    pool = GatewayPool(redis_server.url, config_bundles, tmp_path_factory.mktemp("data"))
    yield pool.start()
    pool.close()


@pytest.fixture
def gateway(redis_url: str, _shared_gateway: LiveGateway) -> LiveGateway:
    """A gateway with default settings (no API keys) serving 'digits-mlp' and 'digits-cond'.

    Shared by the tests of a module (starting uvicorn per test is slow); Redis is flushed
    around each test, so only its in-process metrics carry over.
    """
    return _shared_gateway


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check ``response`` is a problem+json document with ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:rpg:problem:")
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body
