"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the gateway returns has this shape, so clients parse one format::

    {"type": "urn:rpg:problem:invalid-request", "title": "Invalid request body", "status": 422,
     "detail": "task_embedding[3]: Input should be a finite number ...",
     "errors": [{"field": "task_embedding[3]", "pointer": "/task_embedding/3", "message": ...}]}

Routes raise `ProblemError`; `install_problem_handlers` turns it, FastAPI's validation
errors, Starlette's HTTP errors (404 for unknown paths, 405, ...), Redis outages and any
unexpected exception into such a body. Unexpected exceptions are logged with their traceback
and answered with a generic 500: the client never sees a stack trace.

No problem document grows with the request: ``errors`` keeps the first `MAX_ERRORS` entries
and ``more_errors`` counts the rest. A client that disconnects before its request is read
is not a server error: it is logged at debug level and counted as status 499.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "FieldError",
    "ProblemError",
    "UnhandledErrorMiddleware",
    "field_errors_from_pydantic",
    "install_problem_handlers",
    "problem_response",
    "summarize",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_ERRORS = 20  # per-field errors listed in one problem; the rest are only counted
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"
_TYPE_PREFIX = "urn:rpg:problem:"
logger = logging.getLogger("rpg.gateway")

FieldError = dict[str, str]


class ProblemError(Exception):
    """An error the client can act on; becomes a problem+json response.

    ``slug`` names the problem type (``urn:rpg:problem:<slug>``); ``detail`` says what is
    wrong and how to fix it; ``errors`` lists per-field problems; ``headers`` are added to
    the response (``Retry-After``, ``WWW-Authenticate``); ``extra`` adds members to the body.
    ``errors`` beyond `MAX_ERRORS` are dropped and counted in ``more_errors``;
    ``error_count`` is the number found in all when ``errors`` lists only the first.
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        errors: Sequence[FieldError] | None = None,
        error_count: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = list(errors[:MAX_ERRORS]) if errors else None
        total = error_count if error_count is not None else len(errors or ())
        self.more_errors = max(0, total - len(self.errors or ()))
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The problem document (JSON-safe)."""
        doc: dict[str, Any] = {
            "type": _TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        if self.more_errors:
            doc["more_errors"] = self.more_errors
        doc.update(self.extra)
        return doc


def problem_response(problem: ProblemError) -> JSONResponse:
    """The HTTP response for ``problem``."""
    return JSONResponse(
        problem.body(),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _field_path(loc: Iterable[int | str]) -> tuple[str, str]:
    """('task_embedding', 3) -> ("task_embedding[3]", "/task_embedding/3")."""
    dotted = ""
    pointer = ""
    for part in loc:
        if isinstance(part, int):
            dotted += f"[{part}]"
        else:
            dotted += f".{part}" if dotted else str(part)
        pointer += "/" + str(part).replace("~", "~0").replace("/", "~1")
    return dotted or "(body)", pointer or "/"


def field_errors_from_pydantic(
    errors: Sequence[Mapping[str, Any]],
    *,
    allowed_fields: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    limit: int | None = None,
) -> list[FieldError]:
    """Pydantic's error list as ``[{"field", "pointer", "message"}]``, messages made actionable.

    ``strip_prefix`` drops leading location parts FastAPI adds (``"body"``, ``"query"``);
    ``limit`` converts only the first errors (the caller counts the rest).
    """
    out: list[FieldError] = []
    for error in errors[:limit]:
        loc = list(error.get("loc", ()))
        while loc and loc[0] in strip_prefix:
            loc.pop(0)
        # Pydantic appends the union member it tried (e.g. 'list[float]'); it only adds noise.
        loc = [part for part in loc if not (isinstance(part, str) and "[" in part)]
        field, pointer = _field_path(loc)
        kind = str(error.get("type", ""))
        message = str(error.get("msg", "invalid value"))
        if kind == "extra_forbidden":
            message = "unknown field; remove it" + (
                f" (allowed fields: {', '.join(allowed_fields)})"
                if allowed_fields and len(loc) == 1
                else ""
            )
        elif kind == "finite_number":
            message = "must be a finite number (NaN and Infinity are not allowed)"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "model_type" and not loc:
            message = "the request body must be a JSON object"
        out.append({"field": field, "pointer": pointer, "message": message})
    return out


def summarize(errors: Sequence[FieldError], limit: int = 5, *, total: int | None = None) -> str:
    """One sentence listing the first few field errors (of `total`, default all given)."""
    total = len(errors) if total is None else total
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:limit])
    more = f" (and {total - limit} more)" if total > limit else ""
    return f"{shown}{more}"


def _status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _internal_error() -> ProblemError:
    return ProblemError(
        500,
        "internal-error",
        "Internal server error",
        "the gateway failed unexpectedly; the error was logged. Retry later, and report it "
        "if it persists.",
    )


class UnhandledErrorMiddleware:
    """Answer any exception that escapes a route with a 500 problem, and log its traceback.

    Starlette's own handler re-raises after responding, and uvicorn then drops the
    connection, so a client could see a reset instead of the 500; this one does not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            logger.error(
                "unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc
            )
            if started:  # too late for a clean answer; let the server close the connection
                raise
            await problem_response(_internal_error())(scope, receive, send)


def _methods_at(routes: Iterable[Any], scope: Scope, found: set[str]) -> None:
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        # An included router is one entry here (FastAPI keeps it whole): look inside.
        inner = getattr(route, "routes", None) or getattr(
            getattr(route, "original_router", None), "routes", None
        )
        if inner:
            _methods_at(inner, scope, found)
        else:
            found.update(getattr(route, "methods", None) or ())


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route's, when a path has a route per method)."""
    found: set[str] = set()
    _methods_at(request.app.router.routes, request.scope, found)
    return sorted(found)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error response of ``app`` a problem+json document."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        found = exc.errors()
        errors = field_errors_from_pydantic(
            found, strip_prefix=("body", "query", "path", "header"), limit=MAX_ERRORS
        )
        return problem_response(
            ProblemError(
                422,
                "invalid-parameters",
                "Invalid request parameters",
                f"fix these parameters and retry: {summarize(errors, total=len(found))}",
                errors=errors,
                error_count=len(found),
            )
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        detail = str(exc.detail) if exc.detail else _status_title(status)
        headers = dict(exc.headers or {})
        if status == 404:
            detail = "no such endpoint; see /docs for the API"
        elif status == 405:
            detail = "this endpoint does not support that method; see /docs for the API"
            headers["Allow"] = ", ".join(_allowed_methods(request))
        problem = ProblemError(
            status,
            "http-" + str(status),
            _status_title(status),
            detail,
            headers=headers,
        )
        return problem_response(problem)

    async def on_redis(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("Redis unavailable: %s", exc)
        return problem_response(
            ProblemError(
                503,
                "job-store-unavailable",
                "Job store unavailable",
                "the gateway cannot reach Redis right now; retry shortly (operators: check "
                "RPG_REDIS_URL and /readyz)",
                headers={"Retry-After": "5"},
            )
        )

    async def on_disconnect(request: Request, _: Exception) -> Response:
        # Nothing to answer (the client is gone); the status is for metrics and logs only.
        logger.debug(
            "client %s disconnected before its %s %s was read",
            request.client.host if request.client else "unknown",
            request.method,
            request.url.path,
        )
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(redis.ConnectionError, on_redis)
    app.add_exception_handler(redis.TimeoutError, on_redis)
    app.add_middleware(UnhandledErrorMiddleware)
