"""A deadline for reading request bodies (ASGI middleware), against slow-body clients.

A client that sends its body a byte at a time would hold a connection and a request slot
for as long as it likes; the server itself has no body timeout. `BodyTimeoutMiddleware`
gives the whole body `timeout_s` seconds from the moment the request's head was read. A
late body is answered `408` with ``Connection: close``. Once the body is complete, reads
are not timed (a streaming response waits on ``receive`` for the disconnect).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import ProblemError, logger, problem_response

__all__ = ["BodyReadTimeout", "BodyTimeoutMiddleware", "install_body_timeout"]


class BodyReadTimeout(Exception):
    """The request body did not arrive in time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"request body not received within {timeout_s} s")
        self.timeout_s = timeout_s


class BodyTimeoutMiddleware:
    """Raise `BodyReadTimeout` from ``receive`` once the body is `timeout_s` seconds late."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BodyReadTimeout(self.timeout_s)
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise BodyReadTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


def install_body_timeout(app: FastAPI, timeout_s: float) -> None:
    """Time out slow request bodies of `app` with a 408 problem that closes the connection."""

    async def on_timeout(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyReadTimeout)
        logger.info(
            "closing %s: its request body took longer than %s s",
            request.client.host if request.client else "a client",
            exc.timeout_s,
        )
        return problem_response(
            ProblemError(
                408,
                "body-timeout",
                "Request body timeout",
                f"the request body did not arrive within {exc.timeout_s} s; send it at once "
                "(operators: RPG_BODY_TIMEOUT_S)",
                headers={"Connection": "close"},
            )
        )

    app.add_exception_handler(BodyReadTimeout, on_timeout)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=timeout_s)
