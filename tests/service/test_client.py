"""`service.client.Client` and `rpg submit` against a real gateway (uvicorn) and real Redis.

Fast tests use the config-only bundles (jobs are queued, never run). Slow ones serve the
trained `tiny_bundle` and run an in-process burst worker to get real files.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
import torch
from safetensors.torch import load_file

from models.zoo.store import build_module
from service.cli import main as rpg_main
from service.client import (
    ApiError,
    Client,
    DownloadError,
    JobCanceled,
    JobFailed,
    TransportError,
    WaitTimeout,
)
from service.settings import GatewaySettings as Settings
from tests.conftest import free_port
from tests.service.conftest import GatewayFactory, GatewayPool, LiveGateway
from worker.registry import GeneratorCache, discover_generators
from worker.runtime import run_worker


@pytest.fixture
def client(gateway: LiveGateway) -> Iterator[Client]:
    with Client(gateway.url) as c:
        yield c


def one_hot(indices: list[int], dim: int = 10) -> list[float]:
    return [1.0 if i in indices else 0.0 for i in range(dim)]


# ---------------------------------------------------------------------------- fast


def test_submit_sends_every_option_and_the_task_forms(client: Client) -> None:
    job = client.submit(
        "digits-cond",
        task=["0", "3"],
        num_samples=2,
        seed=5,
        sampler="ddim",
        steps=10,
        eta=0.5,
        dtype="float16",
    )
    assert job["status"] == "queued"
    request = job["request"]
    assert request["task_embedding"] == one_hot([0, 3])
    assert (request["num_samples"], request["seed"], request["steps"]) == (2, 5, 10)
    assert (request["eta"], request["dtype"], request["sampler"]) == (0.5, "float16", "ddim")

    by_index = client.submit("digits-cond", task={"positive_classes": [7]})
    assert by_index["request"]["task_embedding"] == one_hot([7])
    vector = [0.25] * 10
    assert (
        client.submit("digits-cond", task_embedding=vector)["request"]["task_embedding"] == vector
    )
    assert client.get(job)["id"] == client.get(job["id"])["id"] == job["id"]
    with pytest.raises(TypeError, match="positive_classes"):
        client.submit("digits-cond", task="0")  # a str is a Sequence: refused at run time


def test_architectures(client: Client) -> None:
    names = sorted(a["name"] for a in client.architectures())
    assert names == ["digits-cond", "digits-mlp"]


def test_api_errors_carry_the_problem(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit("digits-cond", task_embedding=[1.0, 0.0])
    error = caught.value
    assert error.status == 422 and error.title
    assert [e["field"] for e in error.errors] == ["task_embedding"]
    text = str(error)
    assert text.startswith("422 ") and "expects 10" in text and "- task_embedding:" in text

    with pytest.raises(ApiError) as caught:
        client.submit("no-such-generator")
    assert caught.value.status == 422 and "no-such-generator" in str(caught.value)
    with pytest.raises(ApiError) as caught:
        client.get("0" * 32)
    assert caught.value.status == 404 and caught.value.type == "urn:rpg:problem:job-not-found"


def test_error_bodies_that_are_not_problems() -> None:
    response = httpx.Response(502, text="<html>bad gateway</html>", headers={"Retry-After": "3"})
    error = ApiError.from_response(response)
    assert error.status == 502 and error.title == "Bad Gateway" and error.errors == []
    assert "<html>bad gateway</html>" in str(error) and error.retry_after == 3.0


def test_unreachable_gateway_is_a_transport_error() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c,
        pytest.raises(TransportError, match="cannot reach the gateway"),
    ):
        c.architectures()


def test_idempotency_key_is_passed_through(client: Client) -> None:
    first = client.submit("digits-mlp", seed=1, idempotency_key="order-42")
    again = client.submit("digits-mlp", seed=1, idempotency_key="order-42")
    assert again["id"] == first["id"]
    assert client.submit("digits-mlp", seed=1)["id"] != first["id"]
    with pytest.raises(ApiError) as caught:
        client.submit("digits-mlp", seed=2, idempotency_key="order-42")
    assert caught.value.status == 422


def test_cancel_then_wait_and_download_raise(client: Client, tmp_path: Path) -> None:
    job = client.submit("digits-mlp")
    canceled = client.cancel(job)
    assert canceled["status"] == "canceled"
    with pytest.raises(JobCanceled) as caught:
        client.wait(job, timeout=5)
    assert caught.value.job["status"] == "canceled" and caught.value.error_type == "Canceled"
    with pytest.raises(ApiError) as conflict:
        client.cancel(job["id"])
    assert conflict.value.status == 409
    with pytest.raises(JobCanceled):
        client.download(job["id"], tmp_path)


def test_wait_gives_up_after_its_timeout(client: Client, tmp_path: Path) -> None:
    job = client.submit("digits-mlp")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait(job, timeout=0.3, poll_interval=0.05)
    assert 0.3 <= time.monotonic() - started < 3
    assert caught.value.job["status"] == "queued" and isinstance(caught.value, TimeoutError)
    with pytest.raises(DownloadError, match="wait"):
        client.download(job, tmp_path)


def test_api_key_is_sent(gateway_factory: GatewayFactory) -> None:
    from service.auth import new_key

    key, entry = new_key("alice")
    live = gateway_factory(api_key_hashes=[entry])
    with Client(live.url) as anonymous, pytest.raises(ApiError) as caught:
        anonymous.architectures()
    assert caught.value.status == 401
    with Client(live.url, api_key=key) as alice:
        assert alice.get(alice.submit("digits-mlp"))["status"] == "queued"


def test_rpg_submit_prints_the_job_id(
    gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", "--url", gateway.url, "--architecture", "digits-cond"]
    assert rpg_main([*argv, "--positive-classes", "2,5", "-n", "2", "--seed", "9"]) == 0
    job_id = capsys.readouterr().out.strip()
    job = gateway.http.get(f"/jobs/{job_id}").json()
    assert job["request"]["task_embedding"] == one_hot([2, 5])
    assert (job["request"]["num_samples"], job["request"]["seed"]) == (2, 9)

    assert rpg_main([*argv, "--task-embedding", "[1, 2]"]) == 2
    assert "expects 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rpg_main([*argv, "--task-embedding", "[1, NaN]"])
    with pytest.raises(SystemExit):
        rpg_main([*argv, "--task-embedding", "[1]", "--positive-classes", "1"])


# ---------------------------------------------------------------------------- slow: real jobs


@pytest.fixture(scope="module")
def warm_cache(tiny_bundle: Path) -> GeneratorCache:
    cache = GeneratorCache(discover_generators([str(tiny_bundle)]), device="cpu")
    cache.warm()
    return cache


@pytest.fixture
def start_live(
    redis_url: str, tiny_bundle: Path, tmp_path: Path
) -> Iterator[Callable[..., LiveGateway]]:
    pool = GatewayPool(redis_url, [tiny_bundle], tmp_path / "data")

    def start(**overrides: Any) -> LiveGateway:
        return pool.start(progress_interval_s=0.0, job_timeout_s=120, **overrides)

    yield start
    pool.close()


def work(live: LiveGateway, cache: GeneratorCache, **overrides: Any) -> None:
    """Run a burst worker in the main thread (RQ's timeouts need it) until the queue is empty."""
    settings: Settings = live.settings.model_copy(update=overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    connection = redis.Redis.from_url(settings.redis_url or "")
    try:
        run_worker(settings, burst=True, connection=connection, cache=cache)
    finally:
        connection.close()
        torch.set_num_threads(threads)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_submit_wait_download_and_load(
    start_live: Callable[..., LiveGateway],
    warm_cache: GeneratorCache,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live = start_live()
    with Client(live.url) as c:
        job = c.submit("digits-mlp", num_samples=2, seed=11)
        finished: dict[str, Any] = {}
        waiter = threading.Thread(
            target=lambda: finished.update(c.wait(job, progress=True, poll_interval=0.02))
        )
        waiter.start()
        work(live, warm_cache)
        waiter.join(timeout=60)
        assert finished["status"] == "succeeded" and finished["progress"] == 1.0
        assert "succeeded" in capsys.readouterr().err  # the progress display

        paths = c.download(finished, tmp_path / "out")
        manifest = finished["result"]["files"]
        assert [p.name for p in paths] == [f["name"] for f in manifest]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
        spec = c.architectures()[0]["architecture"]
        for path, entry in zip(paths, manifest, strict=True):
            assert sha256(path) == entry["sha256"] and path.stat().st_size == entry["size_bytes"]
            build_module(spec).load_state_dict(load_file(path), strict=True)

        # Files already there with the right hash are kept, not fetched again.
        before = [p.stat().st_mtime_ns for p in paths]
        assert c.download(finished["id"], tmp_path / "out") == paths
        assert [p.stat().st_mtime_ns for p in paths] == before


@pytest.mark.slow
def test_download_refetches_the_job_when_urls_expired(
    start_live: Callable[..., LiveGateway], warm_cache: GeneratorCache, tmp_path: Path
) -> None:
    live = start_live(url_ttl_s=1)
    with Client(live.url) as c:
        job = c.submit("digits-mlp", num_samples=2)
        work(live, warm_cache)
        stale = c.get(job)
        first_url = stale["result"]["files"][0]["url"]
        expires = int(parse_qs(urlsplit(first_url).query)["expires"][0])
        while time.time() <= expires + 0.05:
            time.sleep(0.05)
        assert httpx.get(first_url).status_code == 410  # precondition: really expired
        paths = c.download(stale, tmp_path / "expired")
        assert [sha256(p) for p in paths] == [f["sha256"] for f in stale["result"]["files"]]

        tampered = c.get(job)
        tampered["result"]["files"][1]["url"] += "0"  # a broken signature is a 403
        assert httpx.get(tampered["result"]["files"][1]["url"]).status_code == 403
        paths = c.download(tampered, tmp_path / "tampered")
        assert len(paths) == 2 and all(p.is_file() for p in paths)


@pytest.mark.slow
def test_a_file_that_does_not_match_its_manifest_is_not_kept(
    start_live: Callable[..., LiveGateway], warm_cache: GeneratorCache, tmp_path: Path
) -> None:
    live = start_live()
    with Client(live.url) as c:
        job = c.submit("digits-mlp")
        work(live, warm_cache)
        job = c.get(job)
        job["result"]["files"][0]["sha256"] = "0" * 64
        with pytest.raises(DownloadError, match="sha256"):
            c.download(job, tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []  # no partial, no final file


@pytest.mark.slow
def test_wait_raises_job_failed_with_the_reason(
    start_live: Callable[..., LiveGateway], warm_cache: GeneratorCache
) -> None:
    live = start_live()
    with Client(live.url) as c:
        job = c.submit("digits-mlp", num_samples=3)
        work(live, warm_cache, max_num_samples=2)  # this worker refuses what the gateway took
        with pytest.raises(JobFailed) as caught:
            c.wait(job, timeout=10)
    assert caught.value.error_type == "InvalidRequest"
    assert "num_samples" in str(caught.value) and job["id"] in str(caught.value)


@pytest.mark.slow
def test_rpg_submit_waits_and_downloads(
    start_live: Callable[..., LiveGateway],
    warm_cache: GeneratorCache,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live = start_live()
    argv = ["submit", "--url", live.url, "--architecture", "digits-mlp", "-n", "2"]
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(rpg_main([*argv, "--out", str(tmp_path)]))
    )
    runner.start()
    deadline = time.monotonic() + 30
    while not live.rq_keys() and time.monotonic() < deadline:  # until the job is queued
        time.sleep(0.02)
    work(live, warm_cache)
    runner.join(timeout=60)
    assert codes == [0]
    lines = capsys.readouterr().out.split()
    job = live.http.get(f"/jobs/{lines[0]}").json()
    assert [Path(p).name for p in lines[1:]] == [f["name"] for f in job["result"]["files"]]
    assert all(Path(p).parent == tmp_path for p in lines[1:])
