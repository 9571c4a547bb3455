"""Finished-job statistics, counted in Redis where a job finishes (the worker, the reaper,
a cancel), so every gateway replica exports the same totals and reading them writes nothing.

The hash `rpg:stats:jobs` holds, per final status: `count:<status>`, and for two durations
(`duration`: created to finished, what a client waits; `run`: started to finished)
`<kind>_sum:<status>` and cumulative Prometheus buckets `<kind>_le:<status>:<bound>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis as redis_lib

__all__ = ["BUCKETS", "STATS_KEY", "JobStats", "read_job_stats", "record_finished"]

STATS_KEY = "rpg:stats:jobs"
BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
KINDS = ("duration", "run")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def record_finished(
    pipe: redis_lib.Redis | Any,
    *,
    status: str,
    created_at: datetime | None,
    started_at: datetime | None,
    finished_at: datetime,
) -> None:
    """Count one job that reached its final `status` (call once per job, where it ends)."""
    pipe.hincrby(STATS_KEY, f"count:{status}", 1)
    for kind, seconds in (
        ("duration", _seconds(created_at, finished_at)),
        ("run", _seconds(started_at, finished_at)),
    ):
        if seconds is None:
            continue
        pipe.hincrbyfloat(STATS_KEY, f"{kind}_sum:{status}", seconds)
        pipe.hincrby(STATS_KEY, f"{kind}_count:{status}", 1)
        for bound in BUCKETS:
            if seconds <= bound:
                pipe.hincrby(STATS_KEY, f"{kind}_le:{status}:{bound}", 1)


@dataclass(frozen=True)
class Histogram:
    """One status's histogram: cumulative bucket counts, sum and count."""

    buckets: list[tuple[float, int]]
    total: float
    count: int


@dataclass(frozen=True)
class JobStats:
    """What `read_job_stats` found: counts and histograms by final status."""

    finished: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, dict[str, Histogram]] = field(default_factory=dict)  # kind -> status


def _parse(raw: Mapping[bytes, bytes]) -> JobStats:
    values = {k.decode(): v.decode() for k, v in raw.items()}
    finished = {
        key.split(":", 1)[1]: int(value)
        for key, value in values.items()
        if key.startswith("count:")
    }
    histograms: dict[str, dict[str, Histogram]] = {}
    for kind in KINDS:
        statuses = {key.split(":", 1)[1] for key in values if key.startswith(f"{kind}_count:")}
        histograms[kind] = {
            status: Histogram(
                buckets=[
                    (bound, int(values.get(f"{kind}_le:{status}:{bound}", 0))) for bound in BUCKETS
                ],
                total=float(values.get(f"{kind}_sum:{status}", 0.0)),
                count=int(values[f"{kind}_count:{status}"]),
            )
            for status in sorted(statuses)
        }
    return JobStats(finished=finished, histograms=histograms)


def read_job_stats(connection: redis_lib.Redis) -> JobStats:
    """The finished-job statistics (one HGETALL; writes nothing)."""
    raw: Mapping[bytes, bytes] = connection.hgetall(STATS_KEY)  # type: ignore[assignment]
    return _parse(raw)
