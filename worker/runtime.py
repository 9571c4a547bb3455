"""The worker process: warm generators, a no-fork RQ worker, a heartbeat and a reaper.

`run_worker(settings)` is what `rpg worker` runs:

- loads every generator in `settings.generators` once, onto `settings.worker_device`;
- serves their queues (`rpg:<name>`) with `GenerationWorker`, an RQ `SimpleWorker`: jobs
  run in this process (no fork per job, so weights stay warm and CUDA stays usable), and
  job timeouts still hold: RQ arms SIGALRM in the main thread and the job also checks its
  deadline between chunks;
- a heartbeat thread writes `rpg:worker:<name>` every `settings.heartbeat_interval_s` with a
  TTL of 3 intervals, and on each beat re-queues or fails the jobs of workers whose key has
  expired (`worker.queue.reaper`). So a job whose worker was killed ends within
  about 3-4 intervals, even without any poll;
- Redis outages of any length are waited out (`worker.reconnect.patient`: every Redis call
  retries with backoff and logs that it waits), and a work loop that ends for any other
  unexpected reason is restarted (`Supervisor`) under a new incarnation name, after handing
  its orphaned job to the dead-worker path. Only a stop request (SIGINT/SIGTERM) ends it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from models.limits import FileLimits
from worker.errors import GeneratorConfigError
from worker.jobs import WorkerContext, current_context, install_context
from worker.queue.events import emit, wants_webhook
from worker.queue.keys import (
    DEAD_AFTER_BEATS,
    QUEUES_KEY,
    WORKERS_KEY,
    connect,
    iso,
    queue_name,
    rq_queue,
    utc_now,
    worker_key,
)
from worker.queue.reaper import ReaperLoop, reap_dead_jobs
from worker.reconnect import impatient, patient, stop_waiting
from worker.registry import GeneratorCache, SkippedGenerator, survey_generators
from worker.settings import Settings

__all__ = ["GenerationWorker", "Heartbeat", "Supervisor", "build_worker", "run_worker"]

log = logging.getLogger("rpg.worker")

RESTART_FIRST_S = 1.0  # wait before restarting a work loop that ended unexpectedly
RESTART_MAX_S = 30.0  # doubling up to this while it keeps ending
HEALTHY_RUN_S = 60.0  # a loop that ran this long resets the wait


class GenerationWorker(SimpleWorker):
    """An RQ worker that runs jobs in its own process and remembers the current job id
    (for the heartbeat), with the JSON serializer."""

    current_job_id: str | None = None
    stop_signalled = False  # SIGINT/SIGTERM seen (RQ leaves _stop_requested unset when idle)
    # RQ's command channel (remote stop/shutdown) costs a thread and ~1 s at teardown;
    # burst runs (tests, batch) switch it off.
    listen_for_commands = True

    def subscribe(self) -> None:
        """Listen for RQ commands unless switched off."""
        if self.listen_for_commands:
            super().subscribe()

    def unsubscribe(self) -> None:
        """Stop listening for RQ commands (if listening)."""
        if self.listen_for_commands:
            super().unsubscribe()

    def request_stop(self, signum: Any, frame: Any) -> None:
        """SIGINT/SIGTERM (RQ's handler): also stop waiting for Redis, so a worker stopped
        during an outage exits instead of retrying forever."""
        self.stop_signalled = True
        stop_waiting()
        super().request_stop(signum, frame)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run one job in this process."""
        self.current_job_id = job.id
        try:
            super().execute_job(job, queue)
        finally:
            self.current_job_id = None
        _completed_webhook(job)


def _completed_webhook(job: Job) -> None:
    # After RQ stored the outcome, so the event carries the final document.
    request = (job.kwargs or {}).get("request") or {}
    if wants_webhook(request, "completed"):
        context = current_context()
        emit(
            context.connection,
            job.id,
            "completed",
            settings=context.settings,
            storage=context.storage,
        )


class Heartbeat:
    """Writes this worker's liveness key on a background thread and reaps dead workers' jobs."""

    def __init__(
        self,
        connection: redis_lib.Redis,
        settings: Settings,
        name: str,
        describe: Callable[[], dict[str, Any]],
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.name = name
        self.describe = describe
        self.reaper = ReaperLoop(connection, settings)  # run on each beat, not its own thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Refresh the liveness key now."""
        ttl_ms = max(1, math.ceil(DEAD_AFTER_BEATS * self.settings.heartbeat_interval_s * 1000))
        info = {**self.describe(), "name": self.name, "last_heartbeat": iso(utc_now())}
        with self.connection.pipeline() as pipe:
            pipe.set(worker_key(self.name), json.dumps(info), px=ttl_ms)
            pipe.sadd(WORKERS_KEY, self.name)
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
                reaped = self.reaper.run_once()
                if reaped:
                    log.warning("jobs of dead workers re-queued or failed: %s", reaped)
            except redis_lib.RedisError as exc:  # keep beating once Redis is back
                log.warning("heartbeat failed: %s", exc)

    def rename(self, name: str) -> None:
        """Beat under `name` from now on and drop the old name's key (that worker is gone)."""
        old, self.name = self.name, name
        self.beat()
        self.connection.delete(worker_key(old))
        self.connection.srem(WORKERS_KEY, old)

    def start(self) -> None:
        """Beat once now, then every interval on a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="rpg-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the liveness key (a clean exit is not a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        client = impatient(self.connection)  # Redis may be down: do not wait it out here
        try:
            client.delete(worker_key(self.name))
            client.srem(WORKERS_KEY, self.name)
        except redis_lib.RedisError:
            pass
        finally:
            client.close()


def _remove_stale_scratch(settings: Settings) -> None:
    # A killed worker leaves its job's temp directory behind. Any scratch directory older
    # than the job timeout belongs to no running job (other workers may share data_dir).
    root = settings.data_dir / "tmp"
    if not root.is_dir():
        return
    cutoff = time.time() - settings.job_timeout_s - 60
    for entry in root.glob("job-*"):
        with contextlib.suppress(OSError):
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def build_worker(
    settings: Settings,
    *,
    connection: redis_lib.Redis | None = None,
    cache: GeneratorCache | None = None,
    name: str | None = None,
) -> tuple[GenerationWorker, WorkerContext]:
    """The RQ worker and job context for `settings` (generators loaded and warm)."""
    skipped: list[SkippedGenerator] = []
    if cache is None:
        limits = FileLimits.from_settings(settings)
        survey = survey_generators(settings.generators, limits)
        skipped.extend(survey.skipped)
        cache = GeneratorCache(survey.sources, device=settings.worker_device, limits=limits)
    _remove_stale_scratch(settings)
    loaded = cache.warm()
    skipped.extend(cache.skipped)
    for generator, seconds in loaded.items():
        log.info("generator %s ready (%.2f s)", generator, seconds)
    for entry in skipped:
        log.error("generator %s skipped: %s", entry.path, entry.reason)
    if not cache.names:
        why = f" (skipped: {'; '.join(e.reason for e in skipped)})" if skipped else ""
        raise GeneratorConfigError(
            "no generators to serve: pass --generators DIR (a bundle, a directory of bundles, "
            f"or hf://org/repo) or set RPG_GENERATORS{why}"
        )
    cache.skipped = skipped
    from worker.storage import make_storage

    connection = connection if connection is not None else patient(connect(settings))
    name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    queues = [rq_queue(connection, queue_name(generator)) for generator in cache.names]
    connection.sadd(QUEUES_KEY, *[queue.name for queue in queues])
    worker = GenerationWorker(queues, connection=connection, serializer=JSONSerializer, name=name)
    context = WorkerContext(
        settings=settings,
        cache=cache,
        storage=make_storage(settings.storage_settings()),
        connection=connection,
        worker_name=name,
    )
    return worker, context


class Supervisor:
    """Keeps a worker's RQ work loop running until a stop request (SIGINT/SIGTERM).

    RQ's loop quits on any unexpected error (it logs "found an unhandled exception,
    quitting"). Then the supervisor waits (1 s, doubling up to 30 s), starts a fresh RQ
    worker under a new incarnation name (`<name>.1`, `<name>.2`, ...: RQ refuses a name
    whose record it did not see die) and drops the old name's heartbeat, so a job the old
    loop left "running" is re-queued or failed by the usual dead-worker path at once.
    """

    def __init__(self, worker: GenerationWorker, *, settings: Settings, burst: bool) -> None:
        self.worker = worker
        self.settings = settings
        self.burst = burst
        self.base_name = worker.name
        self.restarts = 0
        self.heartbeat: Heartbeat | None = None

    def _replace(self) -> None:
        old = self.worker
        self.restarts += 1
        self.worker = type(old)(
            old.queues,
            connection=old.connection,
            serializer=JSONSerializer,
            name=f"{self.base_name}.{self.restarts}",
        )
        self.worker.listen_for_commands = old.listen_for_commands
        if self.heartbeat is not None:
            self.heartbeat.rename(self.worker.name)
        reaped = reap_dead_jobs(old.connection, settings=self.settings)
        if reaped:
            log.warning("jobs left by the stopped work loop re-queued or failed: %s", reaped)

    def run(self) -> bool:
        """Work until stopped (or, with `burst`, until the queues are empty); returns
        whether any job ran."""
        worked = False
        delay = RESTART_FIRST_S
        while True:
            began = time.monotonic()
            error: Exception | None = None
            try:
                level = "WARNING" if self.burst else "INFO"
                worked = self.worker.work(burst=self.burst, logging_level=level) or worked
            except Exception as exc:  # SystemExit / KeyboardInterrupt (cold stop) end it
                error = exc
            stopping = self.worker._stop_requested or self.worker.stop_signalled
            if stopping or (self.burst and error is None):
                return worked
            if time.monotonic() - began > HEALTHY_RUN_S:
                delay = RESTART_FIRST_S
            log.error(
                "the work loop of worker %s ended unexpectedly (%s); restarting in %.0f s",
                self.worker.name,
                f"{type(error).__name__}: {error}" if error else "see the error above",
                delay,
                exc_info=error,
            )
            try:
                time.sleep(delay)
                self._replace()
            except StopRequested:  # RQ's signal handler, when Ctrl-C comes between loops
                return worked
            delay = min(RESTART_MAX_S, delay * 2)


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    connection: redis_lib.Redis | None = None,
    cache: GeneratorCache | None = None,
    name: str | None = None,
) -> bool:
    """Serve jobs until stopped (SIGINT/SIGTERM: finish the current job, then exit), or
    until the queues are empty with `burst`. Returns whether any job ran. Redis outages
    and unexpected errors do not end it (see `Supervisor`)."""
    if settings.worker_cpu_threads:
        import torch

        torch.set_num_threads(settings.worker_cpu_threads)
    worker, context = build_worker(settings, connection=connection, cache=cache, name=name)
    worker.listen_for_commands = not burst
    supervisor = Supervisor(worker, settings=settings, burst=burst)
    device = context.cache.device

    def describe() -> dict[str, Any]:
        current = supervisor.worker.current_job_id
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "generators": context.cache.names,
            "skipped_generators": [entry.public() for entry in context.cache.skipped],
            "device": device,
            "state": "busy" if current else "idle",
            "current_job": current,
        }

    heartbeat = Heartbeat(worker.connection, settings, worker.name, describe)
    supervisor.heartbeat = heartbeat
    # RQ installs its own SIGINT/SIGTERM handlers; put ours back afterwards (matters when
    # the worker runs inside another program, e.g. tests).
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install_context(context)
    heartbeat.start()
    try:
        return supervisor.run()
    finally:
        heartbeat.stop()
        install_context(None)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
