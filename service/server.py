"""The uvicorn server of a gateway, with limits on slow and greedy clients.

`server_config(app, settings)` is the one place a gateway's `uvicorn.Config` is built
(`rpg serve`, the demo and the tests use it). What each limit guards against:

- ``header_timeout_s``: uvicorn has no timeout for a request's head (its keep-alive timer
  starts only after a response, and stops at the first byte of the next request), so a
  client sending one header byte at a time keeps a connection forever ("slowloris").
  `GuardedH11Protocol` closes a connection whose request head is not complete in time,
  counted from the connection's opening, or from the first byte of a kept-alive request.
- ``body_timeout_s``: see `service.limits` (ASGI middleware, 408).
- ``keep_alive_timeout_s``: uvicorn's ``timeout_keep_alive`` (idle kept-alive connections).
- ``max_connections``: uvicorn's ``limit_concurrency``; requests beyond it get ``503``.
- ``max_header_bytes``: h11's ``max_incomplete_event_size``; a larger head gets ``400``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import GatewaySettings

__all__ = ["GuardedH11Protocol", "guarded_protocol", "server_config"]

log = logging.getLogger("rpg.gateway")

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/problem+json\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
_TIMEOUT_BODY = (
    b'{"type":"urn:rpg:problem:header-timeout","title":"Request header timeout",'
    b'"status":408,"detail":"the request head did not arrive in time; send it at once"}'
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head arrives too slowly."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_cycle: object = None

    def _arm_head_timer(self) -> None:
        self._head_cycle = self.cycle  # a new request head replaces the cycle
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is not self._head_cycle or self.transport.is_closing():
            return
        log.info(
            "closing %s: no complete request head within %s s",
            f"{self.client[0]}:{self.client[1]}" if self.client else "a client",
            self.header_timeout_s,
        )
        self.transport.write(_TIMEOUT_RESPONSE % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_timer is None and idle:  # first byte of a kept-alive connection's request
            self._arm_head_timer()
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._cancel_head_timer()  # the head is complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """`GuardedH11Protocol` with this header timeout (uvicorn takes a class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


def server_config(
    app: FastAPI,
    settings: GatewaySettings,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> uvicorn.Config:
    """The uvicorn config of a gateway: address from `settings` (unless given), its limits."""
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        lifespan="on",
        http=guarded_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
