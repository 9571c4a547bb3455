"""``GET /files/{key}?expires=&sig=``: signed downloads for the ``local`` storage backend.

The URL itself is the credential (HMAC over key and expiry, see `worker.signing`), so no API
key is needed. A wrong or tampered signature is a 403, an expired link a 410 (poll the job
for a fresh URL). Keys that break the key rules or escape the files root are refused by
`resolve_local_path`. Single ``Range`` requests get ``206`` + ``Content-Range``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from service.deps import GatewayDep
from service.problems import ProblemError
from worker.signing import (
    SignatureExpiredError,
    SignatureInvalidError,
    StorageKeyError,
    resolve_local_path,
    verify,
)

__all__ = ["router"]

router = APIRouter(tags=["files"])


def _missing(key: str) -> ProblemError:
    return ProblemError(
        404,
        "file-not-found",
        "File not found",
        f"no file {key!r}: it may have been deleted; poll the job for its current files",
    )


@router.get(
    "/files/{key:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        206: {"description": "the requested byte range"},
        403: {"description": "signature missing, malformed or wrong"},
        404: {"description": "no such file (or this deployment does not store files locally)"},
        410: {"description": "the link expired; poll the job for a fresh one"},
    },
)
def download(
    key: str,
    gateway: GatewayDep,
    expires: Annotated[str, Query(description="unix time the link expires")] = "",
    sig: Annotated[str, Query(description="HMAC-SHA256 signature (hex)")] = "",
) -> FileResponse:
    """Stream one generated file (``.safetensors``); supports ``Range: bytes=a-b``."""
    if gateway.settings.storage != "local" or gateway.signing_secret is None:
        raise ProblemError(
            404,
            "not-local-storage",
            "Not served here",
            f"this deployment stores files in {gateway.settings.storage!r}; use the URLs in "
            "the job's result",
        )
    try:
        verify(key, expires, sig, gateway.signing_secret)
    except SignatureExpiredError:
        raise ProblemError(
            410,
            "link-expired",
            "Download link expired",
            "this download link has expired; GET /jobs/{id} again for a freshly signed URL",
        ) from None
    except SignatureInvalidError as exc:
        raise ProblemError(
            403,
            "bad-signature",
            "Invalid download signature",
            f"this download URL's signature is not valid ({exc}); use the URL exactly as the "
            "job returned it (GET /jobs/{id} gives a fresh one)",
        ) from None
    try:
        path = resolve_local_path(gateway.settings.data_dir, key)
    except StorageKeyError:
        raise _missing(key) from None
    if not path.is_file():
        raise _missing(key)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        headers={"Cache-Control": "private, max-age=300"},
    )


# HEAD (size and headers without the body) shares the handler; one documented operation is enough.
router.add_api_route("/files/{key:path}", download, methods=["HEAD"], include_in_schema=False)
