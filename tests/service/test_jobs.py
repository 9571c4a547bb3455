"""GET /jobs/{id} and POST /jobs/{id}/cancel without a worker (queued jobs)."""

from __future__ import annotations

import pytest

from tests.service.conftest import LiveGateway, assert_problem
from worker.queue import queue_depth


def submit(gateway: LiveGateway) -> dict[str, object]:
    response = gateway.http.post("/generate", json={"architecture": "digits-mlp"})
    assert response.status_code == 202
    job: dict[str, object] = response.json()
    return job


@pytest.mark.parametrize(
    "job_id", ["ffffffffffffffffffffffffffffffff", "not-a-job", "x" * 300, "..", "a%20b"]
)
def test_unknown_job_is_a_404_problem(gateway: LiveGateway, job_id: str) -> None:
    # as an API client asks: httpx resolves "/jobs/.." to "/", the web page for HTML clients
    json_only = {"Accept": "application/json"}
    assert_problem(gateway.http.get(f"/jobs/{job_id}", headers=json_only), 404)
    assert_problem(gateway.http.post(f"/jobs/{job_id}/cancel", headers=json_only), 404)


def test_job_reports_its_queue_position(gateway: LiveGateway) -> None:
    first, second = submit(gateway), submit(gateway)
    assert gateway.http.get(f"/jobs/{first['id']}").json()["queue_position"] == 0
    assert gateway.http.get(f"/jobs/{second['id']}").json()["queue_position"] == 1


def test_cancel_a_queued_job(gateway: LiveGateway) -> None:
    job = submit(gateway)
    response = gateway.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    canceled = response.json()
    assert canceled["status"] == "canceled"
    assert canceled["error"]["type"] == "Canceled"
    assert canceled["finished_at"] is not None
    assert queue_depth(gateway.redis) == 0
    # Polling shows the same; cancelling again is a conflict that shows the job.
    assert gateway.http.get(f"/jobs/{job['id']}").json()["status"] == "canceled"
    again = gateway.http.post(f"/jobs/{job['id']}/cancel")
    problem = assert_problem(again, 409)
    assert "already canceled" in problem["detail"]
    assert problem["job"]["id"] == job["id"]


def test_cancel_leaves_other_jobs_queued(gateway: LiveGateway) -> None:
    keep, drop = submit(gateway), submit(gateway)
    assert gateway.http.post(f"/jobs/{drop['id']}/cancel").status_code == 200
    assert gateway.http.get(f"/jobs/{keep['id']}").json()["status"] == "queued"
    assert queue_depth(gateway.redis) == 1
