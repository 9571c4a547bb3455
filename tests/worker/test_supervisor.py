"""The supervisor restarts a work loop that RQ ended on an unexpected error, and the job that
loop left "running" goes through the dead-worker path to a new incarnation of the worker."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from worker.jobs import install_context
from worker.queue import JobRequest, JobStatus, enqueue, get_job
from worker.registry import GeneratorCache
from worker.runtime import GenerationWorker, Heartbeat, Supervisor, build_worker
from worker.settings import Settings


class FaultyWorker(GenerationWorker):
    """Fails once after taking a job (as a bug in the loop would), then stops after the
    next job it finishes, so the test ends."""

    faults = 1

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        if FaultyWorker.faults > 0:
            FaultyWorker.faults -= 1
            self.prepare_job_execution(job, True)  # the job is now "running" on this worker
            raise RuntimeError("injected fault: the work loop breaks mid-job")
        return bool(super().perform_job(job, queue, execution))

    def execute_job(self, job: Job, queue: Queue) -> None:
        super().execute_job(job, queue)
        self._stop_requested = True


@pytest.mark.timeout(120)  # a leaked worker on the same Redis could take the job
def test_work_loop_restarts_and_orphaned_job_is_retried(
    connection: redis.Redis,
    make_settings: Callable[..., Settings],
    warm_cache: GeneratorCache,
) -> None:
    settings = make_settings(job_retries=1)
    built, context = build_worker(settings, connection=connection, cache=warm_cache, name="sup")
    worker = FaultyWorker(
        built.queues, connection=connection, serializer=JSONSerializer, name="sup"
    )
    worker.listen_for_commands = False
    supervisor = Supervisor(worker, settings=settings, burst=False)
    heartbeat = Heartbeat(connection, settings, worker.name, lambda: {"hostname": "h", "pid": 1})
    supervisor.heartbeat = heartbeat
    job_id = enqueue(connection, JobRequest(architecture="digits-mlp", steps=5), settings=settings)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install_context(context)
    heartbeat.start()
    try:
        assert supervisor.run()
    finally:
        heartbeat.stop()
        install_context(None)
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    assert supervisor.restarts == 1 and supervisor.worker.name == "sup.1"
    view = get_job(connection, job_id, settings=settings)
    assert view is not None and view.status is JobStatus.SUCCEEDED, view
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.worker_name == "sup.1"
    assert "worker sup stopped heart-beating" in job.meta["retried_after"]
    assert not connection.exists("rpg:worker:sup")  # the old incarnation's key is gone
