"""Prometheus metrics of one gateway process (``GET /metrics``).

- ``rpg_http_requests_total{method,route,status}`` and
  ``rpg_http_request_duration_seconds{method,route,status}``: every request, labelled by
  the route *template* (``/jobs/{job_id}``), never the raw path, so ids do not explode the
  label space. Paths that match no route are ``route="unmatched"``.
- ``rpg_jobs_finished_total{status}``, ``rpg_job_duration_seconds{status}`` (created to
  finished: what a client waits) and ``rpg_job_run_seconds{status}`` (started to finished):
  recorded when a gateway first sees a job finished (on a poll or a cancel). A Redis marker
  per job makes that once per job across all gateway replicas, so summing replicas is right.
- ``rpg_queue_depth``, ``rpg_live_workers``, ``rpg_redis_up``: read from Redis at scrape time.

Each app has its own `CollectorRegistry`, so several apps (tests) never collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayMetrics", "MetricsMiddleware"]

logger = logging.getLogger("rpg.gateway")

_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
FINISHED = ("succeeded", "failed", "canceled")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _QueueCollector(Collector):
    """Queue depth and live workers, read from Redis on each scrape."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rpg_redis_up", "1 if the gateway reached Redis on this scrape")
        try:
            depth, workers = self._read()
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: cannot read queue state: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield GaugeMetricFamily(
            "rpg_queue_depth", "jobs waiting in the generation queues", value=float(depth)
        )
        yield GaugeMetricFamily(
            "rpg_live_workers", "workers with a fresh heartbeat", value=float(workers)
        )

    def describe(self) -> Iterator[Metric]:  # no Redis call when registering
        return iter(())


class GatewayMetrics:
    """The gateway's metrics and how to record them."""

    def __init__(self, read_queue_state: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rpg_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rpg_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ["method", "route", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "rpg_jobs_finished",
            "jobs seen finished by the gateway, by final status",
            ["status"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "rpg_job_duration_seconds",
            "job time from submission to finish, by final status",
            ["status"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.job_run = Histogram(
            "rpg_job_run_seconds",
            "job time from start on a worker to finish, by final status",
            ["status"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(read_queue_state))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished HTTP request."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_job(self, client: redis.Redis, job: dict[str, Any], *, ttl_s: int) -> None:
        """Record a job's durations the first time any gateway sees it finished."""
        status = str(job.get("status"))
        if status not in FINISHED:
            return
        marker = f"rpg:metrics:observed:{job.get('id')}"
        if not client.set(marker, "1", nx=True, ex=ttl_s):
            return
        self.jobs_finished.labels(status).inc()
        finished = _parse_time(job.get("finished_at"))
        created = _parse_time(job.get("created_at"))
        started = _parse_time(job.get("started_at"))
        if finished is not None and created is not None:
            self.job_duration.labels(status).observe(max(0.0, finished - created))
        if finished is not None and started is not None:
            self.job_run.labels(status).observe(max(0.0, finished - started))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request into `GatewayMetrics`."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before responding, the server answers 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", "GET"), template, status, time.perf_counter() - start
            )
