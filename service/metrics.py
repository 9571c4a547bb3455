"""Prometheus metrics of one gateway process (``GET /metrics``).

- ``rpg_http_requests_total{method,route,status}`` and
  ``rpg_http_request_duration_seconds{method,route,status}``: every request, labelled by
  the route *template* (``/jobs/{job_id}``), never the raw path, so ids do not explode the
  label space. Paths that match no route are ``route="unmatched"``.
- ``rpg_jobs_finished_total{status}``, ``rpg_job_duration_seconds{status}`` (created to
  finished: what a client waits) and ``rpg_job_run_seconds{status}`` (started to finished):
  counted in Redis where a job ends (worker, reaper, cancel; `worker.queue.stats`) and read
  at scrape time, so every replica reports the same deployment-wide totals (do not sum them).
- ``rpg_queue_depth``, ``rpg_live_workers``, ``rpg_redis_up``: read from Redis at scrape time.

Each app has its own `CollectorRegistry`, so several apps (tests) never collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.queue.stats import JobStats

__all__ = ["GatewayMetrics", "MetricsMiddleware"]

logger = logging.getLogger("rpg.gateway")

_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QueueState = tuple[int, int, JobStats]  # (queued jobs, live workers, finished-job stats)


class _QueueCollector(Collector):
    """Queue depth, live workers and finished-job statistics, read from Redis on each scrape."""

    def __init__(self, read: Callable[[], QueueState]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rpg_redis_up", "1 if the gateway reached Redis on this scrape")
        try:
            depth, workers, stats = self._read()
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
        yield from _job_families(stats)

    def describe(self) -> Iterator[Metric]:  # no Redis call when registering
        return iter(())


def _job_families(stats: JobStats) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "rpg_jobs_finished", "jobs that reached a final status", labels=["status"]
    )
    for status, count in sorted(stats.finished.items()):
        finished.add_metric([status], float(count))
    yield finished
    for kind, name, text in (
        ("duration", "rpg_job_duration_seconds", "job time from submission to finish"),
        ("run", "rpg_job_run_seconds", "job time from start on a worker to finish"),
    ):
        family = HistogramMetricFamily(name, f"{text}, by final status", labels=["status"])
        for status, histogram in stats.histograms.get(kind, {}).items():
            buckets = [(str(float(bound)), float(n)) for bound, n in histogram.buckets]
            buckets.append(("+Inf", float(histogram.count)))
            family.add_metric([status], buckets, sum_value=histogram.total)
        yield family


class GatewayMetrics:
    """The gateway's metrics and how to record them."""

    def __init__(self, read_queue_state: Callable[[], QueueState]) -> None:
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
        self.registry.register(_QueueCollector(read_queue_state))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished HTTP request."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

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
