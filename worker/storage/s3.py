"""The ``s3`` backend: boto3 uploads and presigned GET URLs (AWS S3, MinIO, moto).

The worker may reach the store at an internal address (``http://minio:9000``) that
clients cannot; presigned URLs are therefore signed by a second client whose endpoint is
the public one (``http://localhost:9000``). A SigV4 signature covers the host, so a URL
signed for one address and rewritten to another would be refused by the store.
"""

from __future__ import annotations

import mimetypes
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.storage.base import (
    S3Settings,
    Storage,
    StorageConfigError,
    StorageError,
    refuse_version,
    sha256_file,
    validate_key,
)

__all__ = ["S3Storage"]

# S3's hard limit on presigned URL lifetime with SigV4.
MAX_URL_TTL_S = 7 * 24 * 3600


class S3Storage(Storage):
    """Uploads each key to ``s3://<bucket>/<key_prefix>/<key>`` with its sha256 as metadata."""

    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise StorageConfigError(
                "the 's3' storage backend needs boto3: pip install 'rpg-service[s3]'"
            ) from exc
        if not settings.bucket:
            raise StorageConfigError("the 's3' storage backend needs a bucket name")
        if not 0 < settings.url_ttl_s <= MAX_URL_TTL_S:
            raise StorageConfigError(
                f"url_ttl_s must be between 1 and {MAX_URL_TTL_S} s (7 days, the S3 limit); "
                f"got {settings.url_ttl_s}"
            )
        if settings.addressing_style not in ("auto", "path", "virtual"):
            raise StorageConfigError(
                f"addressing_style must be 'auto', 'path' or 'virtual' (MinIO needs 'path'); "
                f"got {settings.addressing_style!r}"
            )
        prefix = settings.key_prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._settings = settings
        self._prefix = prefix
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            region_name=settings.region,
        )
        # SigV4 needs a region even for MinIO, whose default is us-east-1.
        self._region = settings.region or session.region_name or "us-east-1"
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self._client: Any = session.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=self._region, config=config
        )
        public_endpoint = settings.public_endpoint_url or settings.endpoint_url
        self._public_client: Any = session.client(
            "s3", endpoint_url=public_endpoint, region_name=self._region, config=config
        )
        self._bucket_checked = not settings.create_bucket
        self._bucket_lock = threading.Lock()

    def object_key(self, key: str) -> str:
        """The object name in the bucket: ``<key_prefix>/<key>`` (or ``key`` without a prefix)."""
        validate_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def put(self, local_path: Path, key: str) -> None:
        """Upload ``local_path`` (multipart when large) with ``sha256`` object metadata."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        object_key = self.object_key(key)
        source = Path(local_path)
        if not source.is_file():
            raise StorageError(
                f"cannot upload {str(source)!r} as {key!r}: it is not a regular file"
            )
        self._ensure_bucket()
        content_type = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        try:
            digest = sha256_file(source)
            self._client.upload_file(
                str(source),
                self._settings.bucket,
                object_key,
                ExtraArgs={"Metadata": {"sha256": digest}, "ContentType": content_type},
            )
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(
                f"s3 upload of {key!r} to bucket {self._settings.bucket!r} at "
                f"{self._settings.endpoint_url or 'AWS'} failed: {exc}"
            ) from exc

    def url(self, key: str, *, version: str | None = None) -> str:
        """A presigned GET URL on the public endpoint, valid for ``url_ttl_s`` seconds."""
        from botocore.exceptions import BotoCoreError, ClientError

        refuse_version(self.name, version)
        object_key = self.object_key(key)
        try:
            url: str = self._public_client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._settings.bucket, "Key": object_key},
                ExpiresIn=self._settings.url_ttl_s,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not presign {key!r}: {exc}") from exc
        return url

    def delete_many(self, keys: Sequence[str], *, version: str | None = None) -> None:
        """Delete the objects (one request per 1000 keys); presigned URLs then answer 404."""
        from botocore.exceptions import BotoCoreError, ClientError

        refuse_version(self.name, version)
        names = [self.object_key(key) for key in keys]
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start : start + 1000]]
            try:
                answer = self._client.delete_objects(
                    Bucket=self._settings.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (BotoCoreError, ClientError) as exc:
                raise StorageError(
                    f"s3 delete in bucket {self._settings.bucket!r} failed: {exc}"
                ) from exc
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"s3 could not delete {len(errors)} object(s), e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def _ensure_bucket(self) -> None:
        """Create the bucket on first use when ``create_bucket`` is set."""
        if self._bucket_checked:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        bucket = self._settings.bucket
        with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                self._client.head_bucket(Bucket=bucket)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"cannot access bucket {bucket!r}: {exc}") from exc
                kwargs: dict[str, Any] = {"Bucket": bucket}
                # us-east-1 is the one region that refuses an explicit location constraint.
                if self._region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
                try:
                    self._client.create_bucket(**kwargs)
                except ClientError as create_exc:
                    code = str(create_exc.response.get("Error", {}).get("Code", ""))
                    # Another worker may have created it a moment ago.
                    if code != "BucketAlreadyOwnedByYou":
                        raise StorageError(
                            f"cannot create bucket {bucket!r}: {create_exc}"
                        ) from create_exc
            except BotoCoreError as exc:
                raise StorageError(
                    f"cannot reach the S3 store for bucket {bucket!r}: {exc}"
                ) from exc
            self._bucket_checked = True
