"""`GatewaySettings`: the gateway's configuration, the worker's `Settings` plus what only
the HTTP side reads. Every field reads from `RPG_<FIELD>`; `rpg serve` overrides a few with
flags. Built once at start and passed down."""

from __future__ import annotations

from pydantic import Field, field_validator

from worker.settings import CommaList, Settings, split_commas

__all__ = ["GatewaySettings"]


class GatewaySettings(Settings):
    """Settings of a gateway process (docs/reference/settings.md lists every field)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_hashes: CommaList = Field(
        default_factory=list,
        description="'name:sha256hex' entries (`rpg keys create NAME` makes one); empty = no auth",
    )
    rate_limit_per_minute: int = Field(
        default=120, ge=1, description="POST /generate per API key (or client IP)"
    )
    max_body_bytes: int = Field(default=65536, ge=1024)
    prefer_wait_max_s: int = Field(
        default=60,
        ge=0,
        description="longest 'Prefer: wait=N' that POST /generate honours (0 = never waits)",
    )
    idempotency_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="how long an Idempotency-Key of POST /generate keeps naming its job",
    )

    # --- limits on slow and abusive clients (read by service/server.py, service/limits.py)
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection must send a request's whole head within this many seconds "
        "of opening (or of its first byte on a kept-alive connection), else it is closed",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a request body must arrive in full within this many seconds, else 408",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="an idle kept-alive connection is closed after this"
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open connections beyond this get 503 for their requests",
    )
    max_header_bytes: int = Field(
        default=16384,
        ge=1024,
        description="a request head still unfinished after this many bytes gets 400",
    )

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return split_commas(value)

    @property
    def base_url(self) -> str:
        """Where clients reach this gateway (used in download URLs)."""
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")
