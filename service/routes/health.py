"""``/healthz`` (process alive), ``/readyz`` (can serve: Redis and a worker), ``/metrics``.

``/readyz`` also reports the webhook senders (``rpg webhooks``) in its checks. They do not
decide readiness: without one the gateway still generates, and webhook events wait in their
queue (each job that has some says so).

``checks.generators`` lists the served generators and the configured bundles skipped at start
(by this gateway or by a live worker) with the reason. Skipped bundles do not make the
gateway unready while at least one generator is served.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import GatewayDep
from service.problems import ProblemError
from worker.queue import live_workers
from worker.webhook_senders import live_senders
from worker.webhooks import webhook_queue

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: answers while the process runs; touches nothing else (no Redis)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Redis unreachable or no live worker; see checks"}},
)
def readyz(gateway: GatewayDep) -> dict[str, Any]:
    """Readiness: Redis answers AND at least one worker's heartbeat is fresh. ``checks``
    also says whether a webhook sender is alive (not a condition of readiness)."""
    checks: dict[str, Any] = {}
    failed: list[str] = []
    skipped = {e.path: e.public() for e in gateway.skipped_generators}
    served = gateway.catalog.names()
    checks["generators"] = {"served": served, "skipped": list(skipped.values())}
    if skipped and not served:
        failed.append("generators")
    try:
        gateway.probe.ping()
        checks["redis"] = "ok"
        workers = live_workers(gateway.probe, settings=gateway.settings)
        checks["workers"] = f"{len(workers)} live"
        for worker in workers:
            for entry in worker.skipped_generators:
                skipped.setdefault(entry.get("path", ""), entry)
        checks["generators"]["skipped"] = list(skipped.values())
        if not workers:
            checks["workers"] = "no live worker"
            failed.append("workers")
        checks["webhooks"] = _webhook_senders(gateway.probe)
    except (redis.RedisError, OSError) as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__}: {exc})"
        checks["workers"] = "unknown (Redis unreachable)"
        checks["webhooks"] = "unknown (Redis unreachable)"
        failed.append("redis")
    if failed:
        raise ProblemError(
            503,
            "not-ready",
            "Not ready",
            "not ready: "
            + "; ".join(f"{name}: {_summary(name, checks[name])}" for name in failed)
            + (
                ". Fix or replace the skipped generator bundles (checks.generators.skipped "
                "says why)."
                if failed == ["generators"]
                else ". Check RPG_REDIS_URL and start a worker (`rpg worker`)."
            ),
            headers={"Retry-After": "5"},
            extra={"checks": checks, "failed": failed},
        )
    return {"status": "ready", "checks": checks}


def _summary(name: str, check: Any) -> str:
    if name == "generators":
        return f"none served, {len(check['skipped'])} skipped"
    return str(check)


def _webhook_senders(connection: redis.Redis) -> str:
    senders = live_senders(connection)
    if senders:
        return f"{len(senders)} sender(s) live"
    waiting = webhook_queue(connection).count
    return (
        f"no sender alive: {waiting} delivery(ies) queued; webhooks wait until `rpg webhooks` runs"
    )


@router.get("/metrics", response_class=Response)
def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text exposition of this gateway process."""
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)
