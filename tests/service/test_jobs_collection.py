"""`GET /jobs` (the caller's jobs, newest first, cursor pages, status filter), `DELETE
/jobs/{id}`, `GET /jobs/{id}/events` (Server-Sent Events) and `Prefer: wait=N`, over real
HTTP against a real gateway and Redis. Jobs stay queued here (config-only generators); the
tests with a worker are in test_push_e2e.py."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from service.auth import new_key
from tests.service.conftest import GatewayFactory, LiveGateway, assert_problem
from tests.worker.test_reads_are_read_only import _is_write, monitored


def submit(live: LiveGateway, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = live.http.post(
        "/generate", json={"architecture": "digits-mlp", **body}, headers=headers or {}
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def read_events(
    url: str, headers: dict[str, str] | None = None, timeout: float = 20.0
) -> tuple[httpx.Response, list[tuple[str | None, dict[str, Any]]]]:
    """All events of one stream (until the server ends it)."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    with httpx.stream("GET", url, headers=headers or {}, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            return response, events
        event_id, data = None, []
        for line in response.iter_lines():
            if not line:
                if data:
                    events.append((event_id, json.loads("\n".join(data))))
                data = []
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("id:"):
                event_id = line[3:].strip()
    return response, events


def writes(gateway: LiveGateway, commands: list[str]) -> list[str]:
    """The write commands among ``commands`` (by Redis's own COMMAND INFO flags)."""
    cache: dict[str, bool] = {}
    return [c for c in commands if _is_write(gateway.redis, c.split(" ", 1)[0].strip('"'), cache)]


# ---------------------------------------------------------------------------- GET /jobs


def test_list_is_newest_first_with_cursor_pages(gateway_factory: GatewayFactory) -> None:
    alice_key, alice_entry = new_key("alice")
    bob_key, bob_entry = new_key("bob")
    live = gateway_factory(api_key_hashes=[alice_entry, bob_entry])
    alice = {"Authorization": f"Bearer {alice_key}"}
    bob = {"Authorization": f"Bearer {bob_key}"}
    made = [submit(live, alice, seed=i)["id"] for i in range(5)]
    theirs = [submit(live, bob)["id"] for _ in range(2)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = live.http.get("/jobs", params=params, headers=alice).json()
        assert len(body["jobs"]) <= 2
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1] and pages == 3
    listed = live.http.get("/jobs", headers=bob).json()
    assert [job["id"] for job in listed["jobs"]] == theirs[::-1]
    assert listed["jobs"][0]["status"] == "queued" and "request" in listed["jobs"][0]

    live.http.post(f"/jobs/{made[1]}/cancel", headers=alice)
    canceled = live.http.get("/jobs", params={"status": "canceled"}, headers=alice).json()
    assert [job["id"] for job in canceled["jobs"]] == [made[1]]
    queued = live.http.get("/jobs", params={"status": "queued"}, headers=alice).json()
    assert [job["id"] for job in queued["jobs"]] == [made[4], made[3], made[2], made[0]]

    assert_problem(live.http.get("/jobs"), 401)
    assert_problem(live.http.get("/jobs", params={"cursor": "nope!"}, headers=alice), 422)
    assert_problem(live.http.get("/jobs", params={"limit": 1000}, headers=alice), 422)
    assert_problem(live.http.get("/jobs", params={"status": "done"}, headers=alice), 422)


def test_list_reads_only(gateway: LiveGateway) -> None:
    for _ in range(3):
        submit(gateway)
    with monitored(gateway.settings.redis_url or "") as commands:
        assert len(gateway.http.get("/jobs").json()["jobs"]) == 3
    assert any("ZREVRANGEBYSCORE" in c for c in commands), commands
    assert writes(gateway, commands) == []


# ---------------------------------------------------------------------------- DELETE


def test_delete_needs_a_finished_job_then_it_is_gone(gateway: LiveGateway) -> None:
    job = submit(gateway)
    body = assert_problem(gateway.http.delete(f"/jobs/{job['id']}"), 409)
    assert "cancel" in body["detail"]
    gateway.http.post(f"/jobs/{job['id']}/cancel")
    response = gateway.http.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204 and response.content == b""
    assert_problem(gateway.http.get(f"/jobs/{job['id']}"), 404)
    assert_problem(gateway.http.delete(f"/jobs/{job['id']}"), 404)
    assert gateway.http.get("/jobs").json()["jobs"] == []


def test_delete_follows_owner_rules(gateway_factory: GatewayFactory) -> None:
    alice_key, alice_entry = new_key("alice")
    bob_key, bob_entry = new_key("bob")
    live = gateway_factory(api_key_hashes=[alice_entry, bob_entry])
    alice = {"Authorization": f"Bearer {alice_key}"}
    job = submit(live, alice)
    live.http.post(f"/jobs/{job['id']}/cancel", headers=alice)
    assert_problem(
        live.http.delete(f"/jobs/{job['id']}", headers={"Authorization": f"Bearer {bob_key}"}), 404
    )
    assert live.http.delete(f"/jobs/{job['id']}", headers=alice).status_code == 204


# ---------------------------------------------------------------------------- events


def test_events_stream_until_the_terminal_state(gateway: LiveGateway) -> None:
    job = submit(gateway)
    url = f"{gateway.url}/jobs/{job['id']}/events"
    result: dict[str, Any] = {}
    reader = threading.Thread(
        target=lambda: result.update(zip(("r", "e"), read_events(url), strict=True))
    )
    reader.start()
    time.sleep(0.6)
    gateway.http.post(f"/jobs/{job['id']}/cancel")
    reader.join(timeout=15)
    assert not reader.is_alive()
    response, events = result["r"], result["e"]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [doc["status"] for _, doc in events] == ["queued", "canceled"]
    assert events[-1][1] == gateway.http.get(f"/jobs/{job['id']}").json()
    ids = [event_id for event_id, _ in events]
    assert all(ids) and ids == sorted(ids)

    # Resuming after the last event: nothing new, the stream just ends.
    _, again = read_events(url, {"Last-Event-ID": ids[-1]})
    assert again == []
    # Resuming from an earlier event: only what came after.
    _, later = read_events(url, {"Last-Event-ID": ids[0]})
    assert [doc["status"] for _, doc in later] == ["canceled"]


def test_events_follow_owner_rules(gateway_factory: GatewayFactory) -> None:
    alice_key, alice_entry = new_key("alice")
    bob_key, bob_entry = new_key("bob")
    live = gateway_factory(api_key_hashes=[alice_entry, bob_entry])
    job = submit(live, {"Authorization": f"Bearer {alice_key}"})
    url = f"{live.url}/jobs/{job['id']}/events"
    assert read_events(url)[0].status_code == 401
    assert read_events(url, {"Authorization": f"Bearer {bob_key}"})[0].status_code == 404
    assert (
        read_events(f"{live.url}/jobs/nope/events", {"Authorization": f"Bearer {alice_key}"})[
            0
        ].status_code
        == 404
    )


def test_events_read_only(gateway: LiveGateway) -> None:
    job = submit(gateway)
    url = f"{gateway.url}/jobs/{job['id']}/events"
    with (
        monitored(gateway.settings.redis_url or "") as commands,
        httpx.stream("GET", url, timeout=10) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("id:")
        time.sleep(1.0)  # several polls of the job
    assert sum(job["id"] in c for c in commands) > 3  # the stream kept reading the job
    assert writes(gateway, commands) == []


# ---------------------------------------------------------------------------- Prefer: wait


def test_prefer_wait_answers_202_when_the_job_does_not_finish(
    gateway_factory: GatewayFactory,
) -> None:
    live = gateway_factory(prefer_wait_max_s=1)
    start = time.monotonic()
    response = live.http.post(
        "/generate", json={"architecture": "digits-mlp"}, headers={"Prefer": "wait=30"}
    )
    waited = time.monotonic() - start
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert 0.9 <= waited < 5  # capped at prefer_wait_max_s
    assert "Preference-Applied" not in response.headers
    plain = live.http.post("/generate", json={"architecture": "digits-mlp"})
    assert plain.status_code == 202
    bad = live.http.post(
        "/generate", json={"architecture": "digits-mlp"}, headers={"Prefer": "wait=soon"}
    )
    assert bad.status_code == 202  # an unknown preference is ignored (RFC 7240)
