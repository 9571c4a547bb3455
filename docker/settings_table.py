"""Print every settings field as a Markdown table (the docs' settings reference).

    .venv/bin/python docker/settings_table.py > /tmp/table.md

One row per field of `service.settings.GatewaySettings` (the worker's `Settings` plus the
gateway's own): the environment variable (`RPG_<FIELD>`), its default, its type and its
description, all read from `model_fields`, so the table cannot drift from the code. The docs
site renders it at build time (docs/hooks/reference.py, page reference/settings.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(REPO))

from pydantic.fields import FieldInfo  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

from service.settings import GatewaySettings as Settings  # noqa: E402  (a superset of the worker's)

# Meanings of the fields that have no `description=` in worker/settings.py (a description
# there wins; tests check that every name here is a real field).
NOTES: dict[str, str] = {
    "host": "address the gateway binds (containers: 0.0.0.0)",
    "port": "port the gateway binds",
    "max_body_bytes": "largest accepted request body (413 beyond)",
    "max_num_samples": "largest num_samples of one request",
    "max_steps": "largest sampler steps of one request",
    "worker_precision": "compute precision of sampling on this worker (autocast); a request's "
    "dtype only sets the dtype of the files it gets",
    "storage": "where generated files go: local (gateway-served), s3, hub",
    "url_ttl_s": "lifetime of download URLs (local: signed; s3: presigned, at most 7 days)",
    "s3_bucket": "bucket of generated files (needed with RPG_STORAGE=s3)",
    "s3_endpoint_url": "S3 API address workers upload to (MinIO: http://minio:9000); unset = AWS",
    "s3_public_endpoint_url": "S3 address that presigned download URLs are signed for "
    "(what clients reach); unset = the endpoint URL",
    "s3_region": "S3 region (unset: the SDK's, else us-east-1)",
    "s3_access_key_id": "S3 credentials; unset = boto3's default chain (env, profile, IAM role)",
    "s3_secret_access_key": "S3 credentials (see above)",
    "s3_addressing_style": "path for MinIO and most self-hosted stores; auto for AWS",
    "s3_key_prefix": "prefix of every object key",
    "s3_create_bucket": "create the bucket on first upload when missing",
    "hub_repo_id": "Hub repo of generated files (needed with RPG_STORAGE=hub)",
    "hub_endpoint": "Hub address (unset: huggingface.co)",
    "hub_token": "Hub token with write access (unset: huggingface_hub's, e.g. HF_TOKEN)",
    "hub_private": "create the Hub repo private",
    "hub_path_prefix": "folder in the Hub repo for generated files",
}


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for noise in ("typing.", "pathlib.", "Annotated[", ", NoDecode]"):
        text = text.replace(noise, "")
    if text.startswith("Literal["):  # Literal['a', 'b'] -> a, b
        text = text[len("Literal[") : -1].replace("'", "")
        return "one of " + text
    return text.replace(" | None", " or unset")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "empty" if not value else ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if str(value) else "(empty)"


def settings_rows(
    only: set[str] | None = None, exclude: set[str] | None = None
) -> list[tuple[str, str, str, str]]:
    """(variable, default, type, description) per settings field, in declaration order;
    ``only`` / ``exclude`` pick fields by name."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        if (only is not None and name not in only) or (exclude and name in exclude):
            continue
        rows.append(
            (
                f"{prefix}{name}".upper(),
                _default(field),
                _type_name(field.annotation),
                (field.description or NOTES.get(name, "")).replace("|", "\\|"),
            )
        )
    return rows


def settings_table(only: set[str] | None = None, exclude: set[str] | None = None) -> str:
    """The Markdown table (no trailing newline) of the fields `settings_rows` picks."""
    lines = ["| variable | default | type | meaning |", "|---|---|---|---|"]
    for variable, default, type_name, description in settings_rows(only, exclude):
        lines.append(f"| `{variable}` | `{default}` | {type_name} | {description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
