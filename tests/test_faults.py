"""Fault injection: a batch of jobs across a worker `kill -9`, a Redis restart (SIGKILL, AOF)
and a gateway restart, all real processes (`service.bench.faultlab`). Every job must end
succeeded, or failed with a reason after its retries; none stuck, none lost, and every
succeeded job's files download and match their sha256."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.bench.faultlab import Deployment, job_document, submit, wait_until

NUM_JOBS = 40
STEPS = 60  # about half a second per sample on one thread: the batch spans the faults
FINISHED = {"succeeded", "failed", "canceled"}


def body(index: int) -> dict[str, object]:
    return {
        "architecture": "digits-mlp",
        "seed": index,
        "steps": STEPS,
        "num_samples": 1 + index % 2,
    }


def busy_worker_pid(deployment: Deployment, ids: list[str]) -> int:
    """The pid of a worker running one of `ids` (waits for one)."""
    from worker.queue import live_workers
    from worker.settings import Settings

    found: list[int] = []

    def running() -> bool:
        import redis

        client = redis.Redis.from_url(deployment.redis_url)
        settings = Settings(redis_url=deployment.redis_url)
        busy = [w for w in live_workers(client, settings=settings) if w.current_job in ids]
        client.close()
        if busy:
            found.append(busy[0].pid)
        return bool(busy)

    wait_until(running, 60, "a worker to run a job of the batch")
    return found[0]


@pytest.mark.slow
def test_batch_survives_worker_kill_redis_restart_and_gateway_restart(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    deployment = Deployment(tmp_path, [tiny_bundle], heartbeat_s=0.5, job_retries=2)
    http = httpx.Client(base_url=deployment.url, timeout=10)
    ids: list[str] = []
    try:
        deployment.start_redis()
        deployment.start_gateway()
        deployment.start_worker()
        deployment.start_worker()
        deployment.wait_for_workers(2)
        ids += [submit(http, body(i), f"batch-{i}") for i in range(25)]

        # 1. kill -9 a worker in the middle of a job; a replacement starts.
        deployment.kill_worker(busy_worker_pid(deployment, ids))
        deployment.start_worker()

        # 2. Redis dies (SIGKILL) and comes back 2 s later from its AOF.
        deployment.kill_redis()
        time.sleep(2)
        deployment.start_redis()
        ids += [submit(http, body(i), f"batch-{i}") for i in range(25, 32)]

        # 3. The gateway dies and restarts while clients keep submitting.
        deployment.kill_gateway()
        restart = threading.Thread(target=deployment.start_gateway)
        restart.start()
        ids += [submit(http, body(i), f"batch-{i}") for i in range(32, NUM_JOBS)]
        restart.join()

        documents: dict[str, dict[str, object]] = {}

        def all_finished() -> bool:
            for job_id in ids:
                if job_id in documents:
                    continue
                document = job_document(http, job_id)
                if document is None or document["status"] not in FINISHED:
                    return False
                documents[job_id] = document
            return True

        try:
            wait_until(all_finished, 240, "every job to finish")
        except TimeoutError:
            stuck = {
                job_id: {
                    k: (job_document(http, job_id) or {}).get(k)
                    for k in ("status", "attempts", "progress", "error")
                }
                for job_id in ids
                if job_id not in documents
            }
            raise TimeoutError(f"jobs not finished after 240 s: {stuck}") from None

        assert len(set(ids)) == NUM_JOBS, "a retried submission queued a second job"
        statuses = {job_id: documents[job_id]["status"] for job_id in ids}
        failed = {j: documents[j]["error"] for j, s in statuses.items() if s != "succeeded"}
        for job_id, error in failed.items():
            assert statuses[job_id] == "failed", (job_id, statuses[job_id])
            assert isinstance(error, dict) and error["type"] and error["message"], (job_id, error)
        assert len(failed) <= 2, failed  # a job fails only after losing all its retries

        # Every succeeded job's files exist and are the bytes its manifest describes (some
        # URLs were signed by the gateway that was killed; its successor serves them).
        for index, job_id in enumerate(ids):
            document = documents[job_id]
            if document["status"] != "succeeded":
                continue
            result = document["result"]
            assert isinstance(result, dict)
            files = result["files"]
            assert len(files) == body(index)["num_samples"]
            for item in files:
                content = http.get(item["url"]).raise_for_status().content
                assert hashlib.sha256(content).hexdigest() == item["sha256"]
                assert len(content) == item["size_bytes"]
    finally:
        http.close()
        deployment.close()
