"""The generation job: what a worker runs for one `GenerationRequest`.

RQ calls `run_generation(request=<dict>)` (referenced by its import path, JSON arguments) in
the worker process, where `worker.runtime` has installed a `WorkerContext` holding the warm
generators, the storage backend and the settings. `execute` is the job itself:

1. validate the request again (the job may have been queued by an older gateway);
2. sample (compute precision `settings.worker_precision`, `settings.chunk_size` tokens per
   denoiser call); between chunks, publish progress (throttled) and stop on a cancel flag or
   on the job's deadline;
3. write each sample to `<data_dir>/tmp/job-*/sample_NNN.safetensors` (temp name + rename,
   sha256, provenance metadata, floats cast to the request's `dtype`);
4. upload all files in one `put_many` (one commit on the hub) and return the manifest.

Temp files are removed whatever happens. A failure records `{"type", "message"}` in
`job.meta["error"]` before RQ marks the job failed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from worker.errors import InvalidRequest, JobCanceled, JobTimeout, error_type
from worker.queue import cancel_key, iso, utc_now
from worker.requests import GenerationRequest, check_request

if TYPE_CHECKING:
    import redis

    from worker.registry import GeneratorCache
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = ["WorkerContext", "current_context", "execute", "install_context", "run_generation"]

# Progress shares of the phases (sampling dominates; writing and uploading follow).
SAMPLING_SHARE = 0.9
WRITTEN_SHARE = 0.95


@dataclass
class WorkerContext:
    """What a job needs from its worker process, built once at worker start."""

    settings: Settings
    cache: GeneratorCache
    storage: Storage
    connection: redis.Redis
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


class ProgressReporter:
    """The sampling callback: publishes progress (throttled, never decreasing), and raises
    `JobCanceled` / `JobTimeout` to stop the job between chunks."""

    def __init__(self, context: WorkerContext, job: Job, deadline: float) -> None:
        self.job = job
        self.connection = context.connection
        self.interval = context.settings.progress_interval_s
        self.deadline = deadline
        self.timeout_s = job.timeout
        self.published = float(job.meta.get("progress", 0.0))
        self.last_write = 0.0

    def check_stop(self) -> None:
        """Raise if the client canceled the job or its time is up."""
        if time.monotonic() > self.deadline:
            raise JobTimeout(
                f"the job ran longer than its timeout ({self.timeout_s} s); ask for fewer samples "
                "or steps, or raise RPG_JOB_TIMEOUT_S"
            )
        if self.connection.exists(cancel_key(self.job.id)):
            raise JobCanceled("canceled by the client")

    def publish(self, progress: float, *, force: bool = False) -> None:
        """Store `progress` in job.meta if it grew and the last write is old enough."""
        now = time.monotonic()
        if progress <= self.published or (not force and now - self.last_write < self.interval):
            return
        self.published = progress
        self.last_write = now
        self.job.meta["progress"] = round(progress, 4)
        self.job.save_meta()

    def on_sampling(self, done: float, total: int) -> None:
        """`Generator.sample`'s progress callback."""
        self.check_stop()
        self.publish(SAMPLING_SHARE * done / total)


def _validated(context: WorkerContext, payload: dict[str, Any]) -> GenerationRequest:
    try:
        request = GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidRequest(f"invalid generation request: {problems}") from None
    source = context.cache.sources.get(request.architecture)
    if source is None:
        raise InvalidRequest(
            f"this worker does not serve {request.architecture!r}; it serves {context.cache.names}"
        )
    check_request(request, source.config, settings=context.settings)
    return request


def _started(job: Job) -> None:
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.meta.pop("error", None)
    job.meta.pop("finished_at", None)
    job.save_meta()


def _record_failure(job: Job, exc: BaseException) -> None:
    kind = error_type(exc)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, JobTimeoutException):  # RQ's alarm; say what to do about it
        message = (
            f"the job ran longer than its timeout ({job.timeout} s); ask for fewer samples or "
            "steps, or raise RPG_JOB_TIMEOUT_S"
        )
    job.meta["error"] = {"type": kind, "message": message}
    job.meta["finished_at"] = iso(utc_now())
    with contextlib.suppress(Exception):  # Redis gone: RQ's own failure record still says why
        job.save_meta()


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
        reporter = ProgressReporter(context, job, deadline)
        reporter.check_stop()
        generator, load_s = context.cache.get(request.architecture)
        try:
            generator.make_condition(request.task_embedding)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

        steps = (
            request.steps
            if request.sampler == "ddim"
            else generator.model.config.diffusion.num_timesteps
        )

        from models.sampling_io import cast_floats, sample_metadata, save_state_dict

        start = time.perf_counter()
        tmp_root = context.settings.data_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"job-{job.id}-", dir=tmp_root))
        written = []
        # One sample at a time, written as soon as it exists: memory stays at one model
        # whatever num_samples is, and sample i is the same as in any other request with
        # this seed (Generator.sample's start_index).
        for index in range(request.num_samples):

            def on_chunk(done: float, total: int, index: int = index) -> None:
                reporter.on_sampling(index + done / total, request.num_samples)

            (state_dict,) = generator.sample(
                1,
                condition=request.task_embedding,
                seed=request.seed,
                sampler=request.sampler,
                steps=request.steps,
                eta=request.eta,
                dtype=context.settings.worker_precision,
                chunk_size=context.settings.chunk_size,
                progress=on_chunk,
                start_index=index,
            )
            metadata = sample_metadata(
                generator,
                seed=request.seed,
                sampler=request.sampler,
                steps=steps,
                index=index,
                condition=request.task_embedding,
                job_id=job.id,
                dtype=request.dtype,
            )
            path = scratch / f"sample_{index:03d}.safetensors"
            written.append(save_state_dict(path, cast_floats(state_dict, request.dtype), metadata))
        sample_s = time.perf_counter() - start
        reporter.check_stop()
        reporter.publish(WRITTEN_SHARE, force=True)

        start = time.perf_counter()
        keys = [f"jobs/{job.id}/{item.path.name}" for item in written]
        put = context.storage.put_many(
            [(item.path, key) for item, key in zip(written, keys, strict=True)],
            message=f"RPG job {job.id}: {request.num_samples} x {request.architecture}",
            generation={
                **request.model_dump(mode="json"),
                "generator": generator.generator_id,
                "job_id": job.id,
            },
        )
        upload_s = time.perf_counter() - start
        files = [
            {
                "name": item.path.name,
                "key": key,
                "sha256": item.sha256,
                "size_bytes": item.size_bytes,
                "num_parameters": item.num_parameters,
            }
            for item, key in zip(written, keys, strict=True)
        ]
        job.meta["finished_at"] = iso(utc_now())
        job.save_meta()
        return {
            "files": files,
            "storage_version": put.version,
            "generator_id": generator.generator_id,
            "seed": request.seed,
            "timings": {
                "queue_wait_s": round(queue_wait, 4),
                "load_s": round(load_s, 4),
                "sample_s": round(sample_s, 4),
                "upload_s": round(upload_s, 4),
                "total_s": round(queue_wait + time.perf_counter() - begin, 4),
            },
        }
    except BaseException as exc:
        _record_failure(job, exc)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
