"""Webhooks: Standard Webhooks signatures, URL safety checks, and delivery as RQ jobs.

A job's events (`start`, `progress`, `completed`) become deliveries on their own RQ queue
(`rpg-webhooks`, JSON serializer), executed by `rpg webhooks`, a small dedicated process:
a receiver that is down, slow or hanging only ever holds up that process, never a
generation job, a cancel or a health check. Each attempt is appended to
`rpg:webhook-deliveries:<job id>` (time, event, attempt, status code or error), which the
job document shows as `webhook_deliveries`. Failed attempts are retried by RQ with
exponential backoff.

Targets must be `https` URLs whose every resolved address is public; the check runs when the
request is accepted and again before each attempt, and the attempt connects to the very
address it checked (so a DNS answer that changes in between cannot redirect it).
`allow_private` (RPG_WEBHOOK_ALLOW_PRIVATE) also allows `http` and private or loopback
addresses, for local use and tests; cloud metadata, multicast and unspecified addresses are
refused always.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis as redis_lib
from rq import Queue, Retry, get_current_job
from rq.serializers import JSONSerializer

from worker.webhook_senders import pending_key

__all__ = [
    "EVENTS",
    "WEBHOOK_QUEUE",
    "WebhookConfig",
    "WebhookDeliveryFailed",
    "WebhookUrlError",
    "check_url",
    "deliver",
    "deliveries",
    "deliveries_key",
    "enqueue_delivery",
    "install_config",
    "load_or_create_secret",
    "sign",
]

log = logging.getLogger("rpg.webhooks")

EVENTS = ("start", "progress", "completed")
WEBHOOK_QUEUE = "rpg-webhooks"
MAX_RECORDED = 100  # attempts kept per job (the oldest are dropped)
_RESPONSE_PEEK = 1024  # bytes of a receiver's answer kept for the error message

# Cloud instance-metadata endpoints: never a webhook target, even with allow_private.
_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

Resolver = Callable[[str, int], Sequence[str]]


class WebhookUrlError(ValueError):
    """A webhook URL that is malformed or points somewhere deliveries must not go."""


class WebhookDeliveryFailed(Exception):
    """One attempt failed (error status, timeout, refused connection); RQ retries it."""


@dataclass(frozen=True)
class WebhookConfig:
    """What the delivering process needs (built from Settings once, at start)."""

    secret: str  # "whsec_<base64>"
    allow_private: bool = False
    timeout_s: float = 10.0  # per attempt: connect, and each read/write
    retries: int = 5
    backoff_s: float = 2.0  # first retry after this; doubles each time
    record_ttl_s: int = 7 * 24 * 3600


# ---------------------------------------------------------------------------- signing


def _secret_bytes(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise ValueError(
            "the webhook secret must look like 'whsec_<base64>'; make one with "
            "python -c \"import base64, secrets; print('whsec_' + "
            'base64.b64encode(secrets.token_bytes(32)).decode())"'
        )
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("the webhook secret after 'whsec_' is not valid base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret (checked), or one made once and kept in `data_dir/webhook_secret`."""
    if configured:
        _secret_bytes(configured)
        return configured
    path = data_dir / "webhook_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        value = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        try:
            with open(path, "x", encoding="utf-8") as handle:
                handle.write(value)
            path.chmod(0o600)
        except FileExistsError:
            pass  # another process made it first
    return path.read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------------------- URL safety


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the address an attempt connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str  # the checked IP, connected to directly


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str:
    """Why ``address`` may not be a target ("" when it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if allow_private:
        return ""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved (non-public) address"
    return ""


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, *, allow_private: bool, resolve: Resolver = _system_resolver) -> Target:
    """Parse ``url``, resolve its host and check every address; `WebhookUrlError` says why not."""
    hint = "" if allow_private else " (set RPG_WEBHOOK_ALLOW_PRIVATE=true for local receivers)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"webhook {url!r} is not a valid URL ({exc})") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise WebhookUrlError(
            f"webhook must be an {' or '.join(schemes)} URL, got {parts.scheme or 'none'!r}{hint}"
        )
    host = parts.hostname
    if not host:
        raise WebhookUrlError(f"webhook {url!r} has no host; send e.g. https://example.com/hook")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("webhook URLs may not carry a user name or password")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
        addresses = [str(literal)]
    except ValueError:
        try:
            addresses = list(resolve(host, port))
        except (OSError, UnicodeError) as exc:
            raise WebhookUrlError(f"webhook host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise WebhookUrlError(f"webhook host {host!r} does not resolve to any address")
    for text in addresses:
        reason = _refusal(ipaddress.ip_address(text.split("%", 1)[0]), allow_private)
        if reason:
            raise WebhookUrlError(
                f"webhook host {host!r} resolves to {text}, {reason}; webhooks go only to "
                f"public addresses{hint}"
            )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])


# ---------------------------------------------------------------------------- enqueue


def deliveries_key(job_id: str) -> str:
    """The Redis list of a job's delivery attempts (JSON records, oldest first)."""
    return f"rpg:webhook-deliveries:{job_id}"


def deliveries(connection: redis_lib.Redis, job_id: str) -> list[dict[str, Any]]:
    """A job's delivery attempts, oldest first (reads only)."""
    return [json.loads(raw) for raw in connection.lrange(deliveries_key(job_id), 0, -1)]


def webhook_queue(connection: redis_lib.Redis) -> Queue:
    """The deliveries' RQ queue (JSON serializer)."""
    return Queue(WEBHOOK_QUEUE, connection=connection, serializer=JSONSerializer)


def enqueue_delivery(
    connection: redis_lib.Redis,
    *,
    job_id: str,
    event: str,
    url: str,
    document: dict[str, Any],
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 10.0,
    record_ttl_s: int = 7 * 24 * 3600,
) -> str | None:
    """Queue one delivery of ``document`` for ``event``; returns its message id.

    The message id waits in the job's pending set until its last attempt (so the job can say
    when no sender is there to deliver it). Never raises: a webhook must not fail the job
    that emits it (a Redis error is logged and the event is dropped, returning None).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; one of {', '.join(EVENTS)}")
    message_id = f"msg_{uuid.uuid4().hex}"
    payload = {
        "message_id": message_id,
        "job_id": job_id,
        "event": event,
        "url": url,
        "body": json.dumps(document, separators=(",", ":"), sort_keys=True),
    }
    intervals = [max(1, round(backoff_s * 2**i)) for i in range(retries)]
    pending = pending_key(job_id)
    try:
        # pending first: a fast sender may finish the delivery before enqueue returns
        with connection.pipeline() as pipe:
            pipe.sadd(pending, message_id)
            pipe.expire(pending, record_ttl_s)
            pipe.execute()
        webhook_queue(connection).enqueue(
            "worker.webhooks.deliver",
            payload,
            retry=Retry(max=retries, interval=intervals) if retries else None,
            # a bound on the whole attempt, whatever the receiver does (slow drip included)
            job_timeout=max(5, int(3 * timeout_s)),
            result_ttl=3600,
            failure_ttl=24 * 3600,
            description=f"webhook {event} of job {job_id}",
        )
    except redis_lib.RedisError as exc:
        log.warning("webhook %s of job %s not queued: %s", event, job_id, exc)
        with contextlib.suppress(redis_lib.RedisError):
            connection.srem(pending, message_id)
        return None
    return message_id


# ---------------------------------------------------------------------------- delivery

_config: WebhookConfig | None = None


def install_config(config: WebhookConfig | None) -> None:
    """Set the delivering process's configuration (`rpg webhooks` does, once)."""
    global _config
    _config = config


def _record(
    connection: redis_lib.Redis, job_id: str, entry: dict[str, Any], ttl_s: int, *, last: bool
) -> None:
    """Append the attempt to the job's record; after its ``last`` attempt the event no
    longer waits."""
    key = deliveries_key(job_id)
    with connection.pipeline() as pipe:
        pipe.rpush(key, json.dumps(entry))
        pipe.ltrim(key, -MAX_RECORDED, -1)
        pipe.expire(key, ttl_s)
        if last:
            pipe.srem(pending_key(job_id), entry["message_id"])
        pipe.execute()


def _post(target: Target, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST to the checked address (not a fresh DNS answer); returns the status code."""
    ip = ipaddress.ip_address(target.address.split("%", 1)[0])
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    parts = urlsplit(target.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if target.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal
    host_header = name if target.port == default_port else f"{name}:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with (
        httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client,
        client.stream(
            "POST",
            f"{target.scheme}://{netloc}:{target.port}{path}",
            content=body,
            headers={**headers, "Host": host_header},
            extensions=extensions,
        ) as response,
    ):
        seen = 0
        for chunk in response.iter_bytes():  # read a little, never a huge answer
            seen += len(chunk)
            if seen >= _RESPONSE_PEEK:
                break
        return response.status_code


def deliver(payload: dict[str, Any]) -> dict[str, Any]:
    """The RQ job: one signed attempt; raises `WebhookDeliveryFailed` so RQ retries it."""
    config = _config
    if config is None:
        raise RuntimeError("webhook deliveries run in `rpg webhooks` (install_config not called)")
    job = get_current_job()
    attempt = 1
    connection = None
    retries_left = 0
    if job is not None:  # count attempts in the RQ job's meta (it survives retries)
        retries_left = int(job.retries_left or 0)
        attempt = int(job.meta.get("attempt", 0)) + 1
        job.meta["attempt"] = attempt
        job.save_meta()
        connection = job.connection
    entry: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "event": payload["event"],
        "message_id": payload["message_id"],
        "attempt": attempt,
        "status_code": None,
        "error": None,
    }
    failure: str | None = None
    try:
        target = check_url(payload["url"], allow_private=config.allow_private)
    except WebhookUrlError as exc:
        entry["error"] = f"refused: {exc}"  # no retry: the address will not become public
    else:
        body = payload["body"].encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "rpg-service-webhooks",
            "webhook-id": payload["message_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(config.secret, payload["message_id"], timestamp, body),
        }
        try:
            status = _post(target, body, headers, config.timeout_s)
        except httpx.HTTPError as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            entry["error"] = failure
        else:
            entry["status_code"] = status
            if not 200 <= status < 300:
                failure = f"the receiver answered {status}"
    if connection is not None:
        # refused targets are not retried; a failure is retried while RQ has retries left
        last = failure is None or not retries_left
        try:
            _record(connection, payload["job_id"], entry, config.record_ttl_s, last=last)
        except redis_lib.RedisError as exc:
            log.warning("webhook attempt of job %s not recorded: %s", payload["job_id"], exc)
    if failure is not None:
        raise WebhookDeliveryFailed(
            f"webhook {payload['event']} of job {payload['job_id']}: {failure}"
        )
    return entry
