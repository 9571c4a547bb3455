"""A small Python client for the RPG generation service (over httpx).

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        job = client.submit("digits-mlp", num_samples=4, seed=0)
        job = client.wait(job, progress=True)
        paths = client.download(job, "weights/")

It depends on httpx alone (tqdm, when installed, draws the progress bar), so it can be
copied into projects that do not install the service. The API key is sent only to the
gateway, never to the download URLs (they may point at S3 and carry their own signature).

Exceptions (all raised by this module; catch `ClientError` for any of them)::

    ClientError                base of everything below
    ├── ApiError               the gateway (or file server) answered with an error status;
    │                          status, title, detail, errors[] from the problem+json body
    ├── TransportError         the gateway could not be reached, or did not answer in time
    ├── JobError               the job ended without weights; .job is its last JSON
    │   ├── JobFailed          status "failed"; str says why (error.type, error.message)
    │   └── JobCanceled        status "canceled"
    ├── WaitTimeout            wait() gave up before the job finished (also a TimeoutError)
    └── DownloadError          a file failed its sha256/size check, or the job has no result
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "Client",
    "ClientError",
    "DownloadError",
    "JobCanceled",
    "JobError",
    "JobFailed",
    "TransportError",
    "WaitTimeout",
]

FINISHED = frozenset({"succeeded", "failed", "canceled"})
# Statuses worth polling through in wait(): the gateway or Redis is briefly unavailable.
_TRANSIENT = frozenset({429, 502, 503, 504})
_MAX_POLL_INTERVAL_S = 5.0
# A dropped event stream is resumed this many times before wait() falls back to polling;
# the gateway sends a keep-alive well within the read timeout.
_STREAM_RECONNECTS = 5
_STREAM_READ_TIMEOUT_S = 60.0
_CHUNK = 1 << 16

Job = Mapping[str, Any]


# ---------------------------------------------------------------------------- exceptions


class ClientError(Exception):
    """Base class of every error this client raises."""


class ApiError(ClientError):
    """An error response: ``status``, ``title``, ``detail`` and per-field ``errors``.

    The gateway answers errors as RFC 9457 problem+json; other servers (an S3 endpoint) get
    their body's text as ``detail``.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: Sequence[Mapping[str, Any]] | None = None,
        *,
        type: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors or ()]
        self.type = type
        self.body = body
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}: {self.detail}"
        lines = [f"  - {e.get('field', '?')}: {e.get('message', '')}" for e in self.errors]
        return "\n".join([text, *lines])

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error for a non-2xx response (its body must have been read)."""
        body: Any = None
        with contextlib.suppress(ValueError):
            body = response.json()
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(response.headers.get("retry-after"))
        title = response.reason_phrase or "Error"
        if isinstance(body, dict) and "detail" in body:
            errors = body.get("errors")
            return cls(
                response.status_code,
                str(body.get("title") or title),
                str(body["detail"]),
                errors if isinstance(errors, list) else None,
                type=body.get("type"),
                body=body,
                retry_after=retry_after,
            )
        text = response.text.strip()
        detail = text[:500] + ("..." if len(text) > 500 else "") if text else "(empty body)"
        return cls(
            response.status_code, title, detail, None, body=body or text, retry_after=retry_after
        )


class TransportError(ClientError):
    """The server could not be reached or did not answer within the timeout."""


class JobError(ClientError):
    """A job ended without producing weights; ``job`` is its last JSON document."""

    def __init__(self, job: Job) -> None:
        self.job = dict(job)
        error = job.get("error") or {}
        self.error_type = str(error.get("type") or "")
        self.message = str(error.get("message") or "no reason given")
        super().__init__(
            f"job {job.get('id')} {job.get('status')}: "
            + (f"{self.error_type}: " if self.error_type else "")
            + self.message
        )


class JobFailed(JobError):
    """The job failed (``status == "failed"``); the message says why."""


class JobCanceled(JobError):
    """The job was canceled."""


class WaitTimeout(ClientError, TimeoutError):
    """`Client.wait` gave up; the job may still finish (``job`` is its last JSON)."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = dict(job)
        super().__init__(
            f"job {job.get('id')} still {job.get('status')} after {timeout:g} s "
            f"(progress {float(job.get('progress') or 0):.0%}); call wait() again or raise timeout="
        )


class DownloadError(ClientError):
    """A downloaded file does not match its manifest, or there is nothing to download."""


# ---------------------------------------------------------------------------- client


def _job_id(job: Job | str) -> str:
    job_id = job if isinstance(job, str) else job.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"expected a job id or a job dict with an 'id', got {job!r}")
    return job_id


def _task_body(task: Mapping[str, Any] | Sequence[str | int]) -> dict[str, Any]:
    if isinstance(task, Mapping):
        return dict(task)
    if isinstance(task, (str, bytes)) or not isinstance(task, Sequence):
        raise TypeError(
            'task must be {"positive_classes": [...]} or a list of class labels, e.g. ["0", "3"]'
        )
    return {"positive_classes": list(task)}


class Client:
    """HTTP client of one gateway (``base_url``), optionally with an API key.

    Every call raises `ApiError` for an error response and `TransportError` when the
    gateway cannot be reached. Use it as a context manager, or call `close`.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No default auth header: download URLs may live on another host.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path
        headers = {**self._auth, **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(
                f"cannot reach the gateway at {self.base_url} ({type(exc).__name__}: {exc}); "
                "check the URL and that `rpg serve` is running"
            ) from exc
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: the checks when the service can take jobs; else `ApiError` (503)."""
        body: dict[str, Any] = self._request("GET", "/readyz").json()
        return body

    def architectures(self) -> list[dict[str, Any]]:
        """The generators this gateway serves (name, architecture spec, condition, defaults)."""
        body = self._request("GET", "/architectures").json()
        return list(body["architectures"])

    def submit(
        self,
        architecture: str,
        *,
        task_embedding: Sequence[float] | None = None,
        task: Mapping[str, Any] | Sequence[str | int] | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        dtype: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a generation request; returns the job JSON (status ``queued``).

        ``task`` is ``{"positive_classes": [...]}`` or just the list of positive class
        labels. Options left as None take the generator's defaults (the returned job's
        ``request`` shows what was used, seed included). With ``idempotency_key``, resending
        the same request returns the same job instead of queuing another.
        """
        body: dict[str, Any] = {"architecture": architecture, "num_samples": num_samples}
        if task_embedding is not None:
            body["task_embedding"] = [float(v) for v in task_embedding]
        if task is not None:
            body["task"] = _task_body(task)
        optional = {"seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "dtype": dtype}
        body.update({name: value for name, value in optional.items() if value is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        job: dict[str, Any] = self._request("POST", "/generate", json=body, headers=headers).json()
        return job

    def get(self, job: Job | str) -> dict[str, Any]:
        """The job's current JSON (fresh download URLs once it succeeded)."""
        body: dict[str, Any] = self._request("GET", f"/jobs/{_job_id(job)}").json()
        return body

    def cancel(self, job: Job | str) -> dict[str, Any]:
        """Cancel a queued (at once) or running job (it stops at its next chunk).

        Returns the job JSON; a finished job is an `ApiError` with status 409.
        """
        body: dict[str, Any] = self._request("POST", f"/jobs/{_job_id(job)}/cancel").json()
        return body

    def events(
        self,
        job: Job | str,
        *,
        last_event_id: str | None = None,
        read_timeout: float = 60.0,
    ) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """``GET /jobs/{id}/events``: yields ``(event id, job JSON)`` on every change.

        The stream ends after the job's terminal state. Pass the last id seen as
        ``last_event_id`` to resume after a dropped connection. Raises `ApiError` when the
        gateway refuses the stream (e.g. 404), `TransportError` when the connection drops.
        """
        headers = {**self._auth, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.base_url}/jobs/{_job_id(job)}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        try:
            with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                media = response.headers.get("content-type", "").split(";")[0].strip()
                if media != "text/event-stream":
                    raise ApiError(
                        response.status_code,
                        "Not an event stream",
                        f"GET {url} answered {media or 'no content type'}, not text/event-stream",
                    )
                yield from _parse_events(response.iter_lines())
        except httpx.TransportError as exc:
            raise TransportError(f"the event stream of {url} broke: {exc}") from exc

    def wait(
        self,
        job: Job | str,
        *,
        progress: bool = False,
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Wait until the job finishes; returns its JSON once it succeeded.

        Follows the job's event stream (``GET /jobs/{id}/events``; a dropped stream is
        resumed with ``Last-Event-ID``) and falls back to polling when the gateway has no
        stream or it keeps breaking (``stream=False`` polls from the start). Raises
        `JobFailed` / `JobCanceled` (with the job's error message), or `WaitTimeout` after
        ``timeout`` seconds. The poll interval starts at ``poll_interval`` and grows while
        nothing changes (up to 5 s); brief outages (429/5xx, connection errors) are polled
        through. ``progress=True`` draws a bar on stderr.
        """
        job_id = _job_id(job)
        deadline = time.monotonic() + timeout
        interval = poll_interval
        display = _Progress(job_id) if progress else None
        last: dict[str, Any] = dict(job) if not isinstance(job, str) else {"id": job_id}
        seen: tuple[Any, ...] = ()
        try:
            if stream:
                streamed = self._follow(job_id, deadline, timeout, display)
                if streamed is not None:
                    return _finished(streamed)
            while True:
                try:
                    last = self.get(job_id)
                except TransportError:
                    pass
                except ApiError as exc:
                    if exc.status not in _TRANSIENT:
                        raise
                if display is not None:
                    display.update(last)
                status = last.get("status")
                if status in FINISHED:
                    return _finished(last)
                now = time.monotonic()
                if now >= deadline:
                    raise WaitTimeout(last, timeout)
                state = (status, last.get("progress"), last.get("queue_position"))
                interval = (
                    poll_interval if state != seen else min(interval * 1.5, _MAX_POLL_INTERVAL_S)
                )
                seen = state
                time.sleep(max(0.0, min(interval, deadline - now)))
        finally:
            if display is not None:
                display.close()

    def _follow(
        self, job_id: str, deadline: float, timeout: float, display: _Progress | None
    ) -> dict[str, Any] | None:
        """The job's terminal JSON read from its event stream; None to fall back to polling.

        Raises `WaitTimeout` at the deadline; 401/404 from the stream are raised as they are
        (polling would answer the same).
        """
        last: dict[str, Any] | None = None
        last_id: str | None = None
        for _ in range(_STREAM_RECONNECTS):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                for event_id, document in self.events(
                    job_id, last_event_id=last_id, read_timeout=min(left, _STREAM_READ_TIMEOUT_S)
                ):
                    last, last_id = document, event_id or last_id
                    if display is not None:
                        display.update(document)
                    if document.get("status") in FINISHED:
                        return document
                    if time.monotonic() >= deadline:
                        break
            except ApiError as exc:
                if exc.status == 401 or (exc.type or "").endswith("job-not-found"):
                    raise
                return None  # no stream here (e.g. an older gateway): poll
            except TransportError:
                continue  # resume with Last-Event-ID
        if time.monotonic() >= deadline:
            raise WaitTimeout(last or {"id": job_id}, timeout)
        return None

    def download(self, job: Job | str, dest: str | os.PathLike[str]) -> list[Path]:
        """Download a succeeded job's files into directory ``dest``; returns their paths.

        Each file is streamed to a temporary name, checked against the manifest's sha256
        and size, then renamed, so a file under its final name is always complete. A file
        already there with the right hash is kept. When a URL is refused as expired (403 or
        410), the job is fetched once more for fresh URLs. Raises `DownloadError` on a hash
        or size mismatch, `JobError` for a failed or canceled job.
        """
        current = self.get(job) if isinstance(job, str) or not job.get("result") else dict(job)
        status = current.get("status")
        if status == "failed":
            raise JobFailed(current)
        if status == "canceled":
            raise JobCanceled(current)
        if status != "succeeded" or not current.get("result"):
            raise DownloadError(
                f"job {current.get('id')} is {status}, not succeeded; call wait(job) first"
            )
        directory = Path(dest)
        directory.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        refreshed = False
        for index in range(len(current["result"]["files"])):
            entry = current["result"]["files"][index]
            target = directory / _safe_name(entry["name"])
            target.parent.mkdir(parents=True, exist_ok=True)  # an adapter's sample folder
            if _matches(target, entry):
                paths.append(target)
                continue
            try:
                self._fetch(entry, target)
            except ApiError as exc:
                if exc.status not in (403, 410) or refreshed:
                    raise
                refreshed = True  # the signed URLs expired: one fresh set for the rest
                current = self.get(current)
                entry = current["result"]["files"][index]
                self._fetch(entry, target)
            paths.append(target)
        return paths

    def _fetch(self, entry: Mapping[str, Any], target: Path) -> None:
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", entry["url"]) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                with open(partial, "wb") as handle:
                    for chunk in response.iter_bytes(_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            if size != entry["size_bytes"] or digest.hexdigest() != entry["sha256"]:
                raise DownloadError(
                    f"{entry['name']}: got {size} bytes with sha256 {digest.hexdigest()}, "
                    f"expected {entry['size_bytes']} bytes with sha256 {entry['sha256']}; "
                    "the file was corrupted in transit or changed on the server: download again"
                )
            os.replace(partial, target)
        except httpx.TransportError as exc:
            raise TransportError(f"downloading {entry['name']} failed: {exc}; retry") from exc
        finally:
            partial.unlink(missing_ok=True)


def _finished(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` if it succeeded; `JobFailed` / `JobCanceled` otherwise."""
    status = job.get("status")
    if status == "failed":
        raise JobFailed(job)
    if status == "canceled":
        raise JobCanceled(job)
    return job


def _parse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """Server-Sent Events (the subset the gateway sends): ``id:`` and ``data:`` lines, a
    blank line ending each event, ``:`` comments as keep-alives."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            data = []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def _safe_name(name: str) -> str:
    """A server-given file name as a path inside `dest`: a plain name, or one sample folder
    and a plain name (an adapter sample: ``sample_000/adapter_config.json``)."""
    # The name comes from the server: never let it pick a path outside `dest`.
    parts = name.split("/") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or any(
        not part or part in (".", "..") or part.startswith(".") or "\\" in part or "\0" in part
        for part in parts
    ):
        raise DownloadError(
            f"refusing the file name {name!r} from the server (not a plain name or folder/name)"
        )
    return name


def _matches(path: Path, entry: Mapping[str, Any]) -> bool:
    if not path.is_file() or path.stat().st_size != entry["size_bytes"]:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == entry["sha256"]


class _Progress:
    """A job's progress on stderr: a tqdm bar when tqdm is installed, else one line per change."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last: tuple[Any, ...] = ()
        self.bar: Any = None
        try:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                desc=f"job {job_id[:8]}",
                unit="%",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",
                file=sys.stderr,
            )
        except ImportError:
            pass

    def update(self, job: Mapping[str, Any]) -> None:
        status = str(job.get("status") or "?")
        percent = round(100 * float(job.get("progress") or 0.0))
        position = job.get("queue_position")
        label = (
            f"queued (#{position + 1})" if status == "queued" and position is not None else status
        )
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)  # one redraw per change, not two
            if percent > self.bar.n:
                self.bar.update(percent - self.bar.n)
            elif (status, percent, position) != self.last:
                self.bar.refresh()
        elif (status, percent, position) != self.last:
            print(f"job {self.job_id}: {label} {percent}%", file=sys.stderr, flush=True)
        self.last = (status, percent, position)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
