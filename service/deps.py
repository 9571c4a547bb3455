"""Request dependencies as ``Annotated[..., Depends(...)]`` aliases, so routes stay declarative.

- `GatewayDep`: the process's `Gateway` (settings, Redis, catalog, ...).
- `OwnerDep`: the API key's name after authentication (None when keys are off); 401 otherwise.
- `RateLimitDep`: counts a ``POST /generate`` against its key (or client address); 429.
- `GenerateBodyDep`: the parsed `GenerateRequest`, read with a size cap; 413 / 415 / 400 / 422.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.body import parse_off_loop
from service.problems import ProblemError
from service.schemas import GenerateRequest
from service.state import Gateway

__all__ = ["GatewayDep", "GenerateBodyDep", "OwnerDep", "RateLimitDep"]

_bearer = HTTPBearer(auto_error=False, description="an API key from `rpg keys create NAME`")


# Dependencies are `async def` so FastAPI runs them on the event loop instead of hopping to
# the thread pool (a measurable share of a request's cost); the rate limit talks to Redis
# through the gateway's asyncio client, so a slow Redis never blocks the loop either.


async def get_gateway(request: Request) -> Gateway:
    """The `Gateway` stored on the app by `create_app`."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def _unauthorized(detail: str, error: str | None) -> ProblemError:
    challenge = 'Bearer realm="rpg"' + (f', error="{error}"' if error else "")
    return ProblemError(
        401,
        "unauthorized",
        "API key required",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


async def authenticate(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The caller's key name; None when the deployment has no keys."""
    if not gateway.keyring.enabled:
        return None
    if credentials is None:
        raise _unauthorized(
            "send your API key as 'Authorization: Bearer <key>' (operators create keys with "
            "`rpg keys create NAME`)",
            None,
        )
    name = gateway.keyring.identify(credentials.credentials)
    if name is None:
        raise _unauthorized(
            "this API key is not valid here; check for typos or ask the operator for a key",
            "invalid_token",
        )
    return name


OwnerDep = Annotated[str | None, Depends(authenticate)]


async def rate_limit(request: Request, gateway: GatewayDep, owner: OwnerDep) -> None:
    """Count this request against its client's per-minute budget (on the event loop)."""
    client = request.client.host if request.client else "unknown"
    identity = f"key:{owner}" if owner is not None else f"ip:{client}"
    decision = await gateway.limiter.hit_async(identity)
    if not decision.allowed:
        raise ProblemError(
            429,
            "rate-limited",
            "Too many requests",
            f"this client may submit {gateway.settings.rate_limit_per_minute} generation "
            f"requests per minute; retry in {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )


RateLimitDep = Annotated[None, Depends(rate_limit)]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        "body-too-large",
        "Request body too large",
        f"the request body is larger than {limit} bytes; send a smaller body (the task "
        "embedding and options fit easily)",
    )


async def read_generate_body(request: Request, gateway: GatewayDep) -> GenerateRequest:
    """Read at most ``max_body_bytes`` (declared AND actually streamed) and parse it strictly
    (`service.body`: off the event loop when large)."""
    limit = gateway.settings.max_body_bytes
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ProblemError(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"send the body as JSON with 'Content-Type: application/json' (got "
            f"{content_type or 'no Content-Type'!r})",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProblemError(
                400, "bad-content-length", "Bad Content-Length", "Content-Length must be digits"
            )
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body, or one longer than it declared
            raise _too_large(limit)
        chunks.append(chunk)
    return await parse_off_loop(b"".join(chunks))


GenerateBodyDep = Annotated[GenerateRequest, Depends(read_generate_body)]
