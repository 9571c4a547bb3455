"""The generation job: what a worker runs for one `JobRequest`.

RQ calls `run_generation(request=<dict>)` (by import path, JSON arguments) in the worker
process, where `worker.runtime` has installed a `WorkerContext` holding the warm generators,
the storage backend and the settings. `execute` runs the phases a reader would name:

1. validate the request again (it may have been queued by an older gateway);
2. sample: `Generator.sample` checks `should_stop()` (cancel flag, deadline) and reports
   `on_progress()` at every denoiser step;
3. write each sample to a scratch directory (temp name + rename, sha256, provenance
   metadata, floats cast to the request's `dtype`);
4. upload all files in one `put_many` (one commit on the hub) and return the manifest.

A request with a webhook also queues its `start` and `progress` events (`worker.queue.events`);
the worker queues `completed` once RQ has recorded the outcome. Temp files are removed
whatever happens. A failure records `{"type", "message"}` in
`job.meta["error"]` before RQ marks the job failed. A Redis outage does not fail the job:
under `rpg worker` its Redis client waits for Redis to come back (`worker.reconnect`) and the
job goes on from where it was; with a client that gives up instead, a failed progress write
or cancel check is logged and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from worker.errors import InvalidRequest, JobCanceled, JobTimeout, error_type
from worker.queue.events import JobEvents
from worker.queue.keys import cancel_key, iso, utc_now
from worker.queue.stats import record_finished
from worker.requests import JobRequest, check_job_request

if TYPE_CHECKING:
    from models.generator import Generator
    from models.sampling_io import WrittenFile
    from worker.registry import GeneratorCache
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = ["WorkerContext", "current_context", "execute", "install_context", "run_generation"]

log = logging.getLogger("rpg.worker")

# Progress shares of the phases (sampling dominates; writing and uploading follow).
SAMPLING_SHARE = 0.9
WRITTEN_SHARE = 0.95
# Least seconds between two reads of the cancel flag (the deadline is checked every call).
CANCEL_POLL_S = 0.2


@dataclass
class WorkerContext:
    """What a job needs from its worker process, built once at worker start."""

    settings: Settings
    cache: GeneratorCache
    storage: Storage
    connection: redis_lib.Redis
    worker_name: str = "local"


_context: WorkerContext | None = None


def install_context(context: WorkerContext | None) -> None:
    """Make `context` the one jobs in this process use (None uninstalls it)."""
    global _context
    _context = context


def current_context() -> WorkerContext:
    """The installed worker context; jobs only run inside `rpg worker`."""
    if _context is None:
        raise RuntimeError(
            "no worker context in this process: generation jobs run inside `rpg worker` "
            "(worker.runtime.run_worker), not in a plain `rq worker`"
        )
    return _context


def run_generation(request: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point (see the module docstring); returns the job's manifest."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_generation must run as an RQ job")
    return execute(current_context(), job, request)


def _timeout_message(seconds: object) -> str:
    return (
        f"the job ran longer than its timeout ({seconds} s); ask for fewer samples or steps, "
        "or raise RPG_JOB_TIMEOUT_S"
    )


class StopCheck:
    """`should_stop()` for the sampling loop: the job's deadline, or the client's cancel
    flag (read at most every `CANCEL_POLL_S`; a Redis error reads as "not canceled")."""

    def __init__(self, connection: redis_lib.Redis, job: Job, deadline: float) -> None:
        self.connection = connection
        self.job = job
        self.deadline = deadline
        self.reason: JobCanceled | JobTimeout | None = None
        self._next_poll = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now > self.deadline:
            self.reason = JobTimeout(_timeout_message(self.job.timeout))
        elif now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            try:
                if self.connection.exists(cancel_key(self.job.id)):
                    self.reason = JobCanceled("canceled by the client")
            except redis_lib.RedisError as exc:
                log.warning("job %s: cannot read its cancel flag (%s); going on", self.job.id, exc)
        return self.reason is not None

    def raise_if_stopped(self) -> None:
        """Raise the reason to stop, if there is one now."""
        if self():
            assert self.reason is not None
            raise self.reason


class ProgressWriter:
    """`on_progress(fraction)` for the sampling loop: stores progress in `job.meta`, at most
    every `interval` seconds, never decreasing; a Redis error skips that write."""

    def __init__(
        self, job: Job, interval: float, after_write: Callable[[], None] | None = None
    ) -> None:
        self.job = job
        self.interval = interval
        self.after_write = after_write  # e.g. the job's progress webhook
        self.published = float(job.meta.get("progress", 0.0))
        self.last_write = 0.0

    def publish(self, progress: float, *, force: bool = False) -> None:
        """Store `progress` if it grew and the last write is old enough (or `force`)."""
        now = time.monotonic()
        if progress <= self.published or (not force and now - self.last_write < self.interval):
            return
        self.job.meta["progress"] = round(progress, 4)
        try:
            self.job.save_meta()
        except redis_lib.RedisError as exc:
            log.warning("job %s: cannot save progress (%s); going on", self.job.id, exc)
            return
        self.published = progress
        self.last_write = now
        if self.after_write is not None:
            self.after_write()

    def on_sampling(self, fraction: float) -> None:
        """`Generator.sample`'s `on_progress`: sampling fills 0..SAMPLING_SHARE."""
        self.publish(SAMPLING_SHARE * fraction)


# ---------------------------------------------------------------------------- phases
def _validated(context: WorkerContext, payload: dict[str, Any]) -> JobRequest:
    try:
        request = JobRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidRequest(f"invalid generation request: {problems}") from None
    source = context.cache.sources.get(request.generator)
    if source is None:
        raise InvalidRequest(
            f"this worker does not serve {request.generator!r}; it serves {context.cache.names}"
        )
    check_job_request(request, source.config, settings=context.settings)
    return request


# Denoiser rows per call when settings leave it to the device (docs/benchmarks "Samplers": on this
# CPU a row costs 1.2-1.5 ms in calls of ~40 rows and 2.9-4.7 ms in calls of 1024).
CPU_CHUNK_SIZE = 64
ACCELERATOR_CHUNK_SIZE = 1024


def _chunk_size(configured: int, generator: Generator) -> int:
    if configured:
        return configured
    return CPU_CHUNK_SIZE if generator.device.type == "cpu" else ACCELERATOR_CHUNK_SIZE


def _sample(
    context: WorkerContext,
    generator: Generator,
    request: JobRequest,
    stop: StopCheck,
    progress: ProgressWriter,
) -> list[dict[str, Any]]:
    from models.errors import SamplingStopped

    try:
        return generator.sample(
            request.num_samples,
            condition=request.task_embedding,
            seed=request.seed,
            sampler=request.sampler,
            steps=request.steps,
            eta=request.eta,
            dtype=context.settings.worker_precision,
            chunk_size=_chunk_size(context.settings.chunk_size, generator),
            should_stop=stop,
            on_progress=progress.on_sampling,
        )
    except SamplingStopped:
        assert stop.reason is not None
        raise stop.reason from None


def _write(
    scratch: Path,
    generator: Generator,
    request: JobRequest,
    job_id: str,
    samples: list[dict[str, Any]],
) -> list[WrittenFile]:
    """Each sample's files: one .safetensors, or an adapter generator's PEFT folder
    (``sample_000/adapter_config.json`` + ``sample_000/adapter_model.safetensors``)."""
    from models.request_check import steps_to_run
    from models.sampling_io import sample_metadata, write_sample

    timesteps = generator.model.config.diffusion.num_timesteps
    written = []
    for index, state_dict in enumerate(samples):
        metadata = sample_metadata(
            generator,
            seed=request.seed,
            sampler=request.sampler,
            steps=steps_to_run(request.sampler, request.steps, timesteps),
            index=index,
            condition=request.task_embedding,
            job_id=job_id,
            dtype=request.dtype,
        )
        written += write_sample(
            scratch, index, state_dict, generator=generator, metadata=metadata, dtype=request.dtype
        )
    return written


def _upload(
    context: WorkerContext,
    job_id: str,
    request: JobRequest,
    generator: Generator,
    written: list[WrittenFile],
    scratch: Path,
) -> tuple[list[dict[str, Any]], str | None]:
    """(file entries of the manifest, storage version); a file's name is its path inside the
    job (``sample_000.safetensors``, or ``sample_000/adapter_config.json`` for adapters)."""
    names = [item.path.relative_to(scratch).as_posix() for item in written]
    keys = [f"jobs/{job_id}/{name}" for name in names]
    put = context.storage.put_many(
        [(item.path, key) for item, key in zip(written, keys, strict=True)],
        message=f"RPG job {job_id}: {request.num_samples} x {request.generator}",
        generation={
            **request.model_dump(mode="json"),
            "generator": generator.generator_id,
            "job_id": job_id,
            # Adapter jobs: the hub backend writes a PEFT model card (library_name, base_model).
            "adapter": _adapter_card(generator),
        },
    )
    files = [
        {
            "name": name,
            "key": key,
            "sha256": item.sha256,
            "size_bytes": item.size_bytes,
            "num_parameters": item.num_parameters,
        }
        for item, name, key in zip(written, names, keys, strict=True)
    ]
    return files, put.version


def _adapter_card(generator: Generator) -> dict[str, Any] | None:
    """What a model card says of an adapter generator's base (None for whole networks)."""
    section = generator.config.get("adapter")
    if not section:
        return None
    base = section.get("base") or {}
    return {
        "base_model": base.get("hub_id"),
        "base_architecture": base.get("architecture"),
        "base_sha256": base.get("sha256"),
        "peft_config": section.get("peft_config"),
    }


# ---------------------------------------------------------------------------- bookkeeping
def _started(job: Job) -> None:
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.meta.pop("error", None)
    job.meta.pop("finished_at", None)
    job.save_meta()


def _finished(job: Job, connection: redis_lib.Redis, status: str) -> None:
    now = utc_now()
    job.meta["finished_at"] = iso(now)
    job.save_meta()
    record_finished(
        connection,
        status=status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=now,
    )


def _record_failure(job: Job, connection: redis_lib.Redis, exc: BaseException) -> None:
    kind = error_type(exc)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, JobTimeoutException):  # RQ's alarm; say what to do about it
        message = _timeout_message(job.timeout)
    job.meta["error"] = {"type": kind, "message": message}
    with contextlib.suppress(redis_lib.RedisError):  # RQ's own failure record still says why
        _finished(job, connection, "canceled" if kind == "Canceled" else "failed")


def execute(context: WorkerContext, job: Job, payload: dict[str, Any]) -> dict[str, Any]:
    """Run one generation job (see the module docstring) and return its manifest."""
    begin = time.perf_counter()
    # The job's clock started when the worker took it; RQ's alarm uses the same budget.
    elapsed = (utc_now() - job.started_at).total_seconds() if job.started_at else 0.0
    deadline = time.monotonic() + float(job.timeout or context.settings.job_timeout_s) - elapsed
    queue_wait = (
        (job.started_at - job.enqueued_at).total_seconds()
        if job.started_at and job.enqueued_at
        else 0.0
    )
    _started(job)
    scratch: Path | None = None
    try:
        request = _validated(context, payload)
        events = JobEvents(
            context.connection,
            job.id,
            payload,
            settings=context.settings,
            storage=context.storage,
        )
        events.start()
        stop = StopCheck(context.connection, job, deadline)
        progress = ProgressWriter(job, context.settings.progress_interval_s, events.progress)
        stop.raise_if_stopped()
        generator, load_s = context.cache.get(request.generator)

        start = time.perf_counter()
        samples = _sample(context, generator, request, stop, progress)
        sample_s = time.perf_counter() - start
        start = time.perf_counter()
        tmp_root = context.settings.data_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"job-{job.id}-", dir=tmp_root))
        written = _write(scratch, generator, request, job.id, samples)
        del samples
        write_s = time.perf_counter() - start
        stop.raise_if_stopped()
        progress.publish(WRITTEN_SHARE, force=True)

        start = time.perf_counter()
        files, version = _upload(context, job.id, request, generator, written, scratch)
        upload_s = time.perf_counter() - start
        _finished(job, context.connection, "succeeded")
        return {
            "files": files,
            "storage_version": version,
            "generator_id": generator.generator_id,
            "seed": request.seed,
            "timings": {
                "queue_wait_s": round(queue_wait, 4),
                "load_s": round(load_s, 4),
                "sample_s": round(sample_s, 4),
                "write_s": round(write_s, 4),
                "upload_s": round(upload_s, 4),
                "total_s": round(queue_wait + time.perf_counter() - begin, 4),
            },
        }
    except BaseException as exc:
        _record_failure(job, context.connection, exc)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
