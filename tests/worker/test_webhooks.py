"""Webhooks: Standard Webhooks signatures (checked with the `standardwebhooks` library),
URL safety, and deliveries through the RQ queue to a real local HTTP receiver."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.worker.webhook_receiver import Receiver
from worker.webhook_senders import pending_count, pending_key
from worker.webhooks import (
    Target,
    WebhookConfig,
    WebhookUrlError,
    _post,
    check_url,
    deliveries,
    enqueue_delivery,
    install_config,
    load_or_create_secret,
    sign,
    webhook_queue,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
DOCUMENT = {"id": "job-1", "status": "succeeded", "progress": 1.0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def run_deliveries(
    connection: redis.Redis, config: WebhookConfig, *, scheduler: bool = False
) -> None:
    """Deliver what is queued (and due), in this process, as `rpg webhooks` would."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install_config(config)
    try:
        worker = SimpleWorker(
            [webhook_queue(connection)],
            connection=connection,
            serializer=webhook_queue(connection).serializer,
        )
        worker.work(burst=True, with_scheduler=scheduler, logging_level="WARNING")
    finally:
        install_config(None)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- signing


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    body = json.dumps(DOCUMENT).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SECRET, "msg_1", timestamp, body),
    }
    assert Webhook(SECRET).verify(body, headers) == DOCUMENT
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"succeeded", b"failed"), headers)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_secret_is_checked_or_made_once(tmp_path) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        load_or_create_secret("not-a-secret", tmp_path)
    made = load_or_create_secret(None, tmp_path)
    assert made.startswith("whsec_") and len(base64.b64decode(made[6:])) == 32
    assert load_or_create_secret(None, tmp_path) == made
    assert load_or_create_secret(SECRET, tmp_path) == SECRET


# ---------------------------------------------------------------------------- URL safety


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://93.184.216.34/hook", "https"),
        ("ftp://93.184.216.34/hook", "https"),
        ("https:///hook", "no host"),
        ("https://user:pw@93.184.216.34/hook", "user name"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://172.16.5.5/hook", "private"),
        ("https://100.64.0.1/hook", "carrier-grade NAT"),
        ("https://169.254.10.10/hook", "link-local"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://[fc00::1]/hook", "private"),
    ],
)
def test_unsafe_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlError, match=reason):
        check_url(url, allow_private=False)


def test_names_are_checked_after_resolution() -> None:
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]  # one public, one private answer

    with pytest.raises(WebhookUrlError, match=r"resolves to 10\.0\.0\.7, a private address"):
        check_url("https://hooks.example.com/x", allow_private=False, resolve=rebinding)
    target = check_url(
        "https://hooks.example.com:8443/x?a=1",
        allow_private=False,
        resolve=lambda host, port: ["93.184.216.34"],
    )
    assert (target.host, target.port, target.address) == (
        "hooks.example.com",
        8443,
        "93.184.216.34",
    )
    with pytest.raises(WebhookUrlError, match="does not resolve"):
        check_url("https://no-such-host.invalid/x", allow_private=False)


def test_allow_private_allows_local_targets_but_never_metadata() -> None:
    assert check_url("http://127.0.0.1:9/hook", allow_private=True).address == "127.0.0.1"
    assert check_url("https://10.0.0.1/hook", allow_private=True).address == "10.0.0.1"
    with pytest.raises(WebhookUrlError, match="metadata"):
        check_url("http://169.254.169.254/", allow_private=True)
    with pytest.raises(WebhookUrlError, match="https or http"):
        check_url("file:///etc/passwd", allow_private=True)


def test_an_attempt_connects_to_the_checked_address(receiver: Receiver) -> None:
    # The name is not resolved again at connect time: the checked IP is used, the name
    # goes in the Host header.
    port = int(receiver.url.split(":")[2].split("/")[0])
    target = Target(
        url=f"http://hooks.example.com:{port}/hook?x=1",
        scheme="http",
        host="hooks.example.com",
        port=port,
        address="127.0.0.1",
    )
    assert _post(target, b"{}", {"content-type": "application/json"}, 5.0) == 204
    (got,) = receiver.wait_for(1)
    assert got.headers["host"] == f"hooks.example.com:{port}"
    assert got.path == "/hook?x=1"


# ---------------------------------------------------------------------------- delivery


def test_delivery_is_signed_and_recorded(redis_url: str, receiver: Receiver) -> None:
    connection = redis.Redis.from_url(redis_url)
    message_id = enqueue_delivery(
        connection, job_id="job-1", event="completed", url=receiver.url, document=DOCUMENT
    )
    assert receiver.requests == []  # nothing is sent until the delivering process runs
    run_deliveries(connection, WebhookConfig(secret=SECRET, allow_private=True))
    (got,) = receiver.wait_for(1)
    assert got.headers["webhook-id"] == message_id
    assert Webhook(SECRET).verify(got.body, got.headers) == DOCUMENT
    (record,) = deliveries(connection, "job-1")
    assert record["event"] == "completed"
    assert record["status_code"] == 204 and record["error"] is None and record["attempt"] == 1
    assert record["time"].endswith("Z")


def test_failed_attempts_are_retried_with_backoff(redis_url: str, receiver: Receiver) -> None:
    connection = redis.Redis.from_url(redis_url)
    receiver.statuses = [500, 204]
    enqueue_delivery(
        connection,
        job_id="job-2",
        event="start",
        url=receiver.url,
        document=DOCUMENT,
        retries=2,
        backoff_s=2.0,
    )
    config = WebhookConfig(secret=SECRET, allow_private=True)
    run_deliveries(connection, config)
    assert [r["status_code"] for r in deliveries(connection, "job-2")] == [500]
    run_deliveries(connection, config, scheduler=True)  # the retry is not due yet
    assert len(receiver.requests) == 1
    time.sleep(3.1)
    run_deliveries(connection, config, scheduler=True)
    records = deliveries(connection, "job-2")
    assert [(r["attempt"], r["status_code"]) for r in records] == [(1, 500), (2, 204)]
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # same message


def test_a_hanging_receiver_times_out_and_is_recorded(redis_url: str, receiver: Receiver) -> None:
    connection = redis.Redis.from_url(redis_url)
    receiver.delay_s = 3.0
    enqueue_delivery(
        connection,
        job_id="job-3",
        event="completed",
        url=receiver.url,
        document=DOCUMENT,
        retries=0,
    )
    start = time.monotonic()
    run_deliveries(connection, WebhookConfig(secret=SECRET, allow_private=True, timeout_s=0.5))
    assert time.monotonic() - start < 2.5
    (record,) = deliveries(connection, "job-3")
    assert record["status_code"] is None and "Timeout" in record["error"]


def test_targets_are_checked_again_at_delivery(redis_url: str, receiver: Receiver) -> None:
    connection = redis.Redis.from_url(redis_url)
    enqueue_delivery(
        connection, job_id="job-4", event="completed", url=receiver.url, document=DOCUMENT
    )
    run_deliveries(connection, WebhookConfig(secret=SECRET, allow_private=False))
    assert receiver.requests == []
    (record,) = deliveries(connection, "job-4")
    assert record["error"].startswith("refused: webhook must be an https URL")
    assert len(webhook_queue(connection).scheduled_job_registry) == 0  # not retried


def test_an_event_waits_until_its_last_attempt(redis_url: str, receiver: Receiver) -> None:
    connection = redis.Redis.from_url(redis_url)
    receiver.statuses = [500, 500]
    message_id = enqueue_delivery(
        connection,
        job_id="job-5",
        event="completed",
        url=receiver.url,
        document=DOCUMENT,
        retries=1,
        backoff_s=1.0,
    )
    assert pending_count(connection, "job-5") == 1
    config = WebhookConfig(secret=SECRET, allow_private=True)
    run_deliveries(connection, config)
    assert pending_count(connection, "job-5") == 1  # failed, with a retry to come
    time.sleep(1.1)
    run_deliveries(connection, config, scheduler=True)
    assert [r["attempt"] for r in deliveries(connection, "job-5")] == [1, 2]
    assert pending_count(connection, "job-5") == 0  # out of retries: nothing waits
    assert connection.ttl(pending_key("job-5")) == -2  # the empty set is gone
    delivered = enqueue_delivery(
        connection, job_id="job-6", event="start", url=receiver.url, document=DOCUMENT
    )
    receiver.statuses = [204]
    run_deliveries(connection, config)
    assert pending_count(connection, "job-6") == 0 and delivered != message_id


def test_enqueue_never_raises_when_redis_is_down() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    assert (
        enqueue_delivery(dead, job_id="j", event="completed", url="https://x", document={}) is None
    )


# ---------------------------------------------------------------------------- job events


def test_a_job_failed_by_the_reaper_still_sends_completed(
    connection: redis.Redis, make_settings: Any
) -> None:
    from tests.worker.test_queue import fake_started, request
    from worker.queue import enqueue, reap_dead_jobs

    settings = make_settings(job_retries=0)
    hook = "https://hooks.example.com/rpg"
    job_id = enqueue(
        connection,
        request(webhook=hook, webhook_events_filter=["completed"]),
        settings=settings,
    )
    quiet = enqueue(connection, request(), settings=settings)  # no webhook: no delivery
    fake_started(connection, job_id, "ghost", attempts=1)
    fake_started(connection, quiet, "ghost", attempts=1)
    assert sorted(reap_dead_jobs(connection, settings=settings)) == sorted([job_id, quiet])
    (queued,) = webhook_queue(connection).get_jobs()
    payload = queued.args[0]
    assert (payload["job_id"], payload["event"], payload["url"]) == (job_id, "completed", hook)
    document = json.loads(payload["body"])
    assert document["status"] == "failed" and document["error"]["type"] == "WorkerDied"
    assert "owner" not in document


def test_public_fields_match_the_gateway_schema() -> None:
    from service.schemas import JobPublic
    from worker.queue.events import PUBLIC_FIELDS

    assert set(PUBLIC_FIELDS) == set(JobPublic.model_fields)
