"""``GET /``: the web page (plain HTML, CSS and JavaScript from ``service/static``).

Browsers get it (``Accept: text/html``); other clients get a 404 problem pointing at
``/docs``. The page needs no API key to load: it asks for one and sends it with each API call, so the
API's rules (keys, owners, limits) are the page's rules.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from service.problems import ProblemError

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Served by name from a fixed list: no path from the URL ever reaches the file system.
_FILES = {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in _MEDIA_TYPES}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index(request: Request) -> FileResponse:
    """The web page, for clients that accept HTML (browsers); API clients get a 404 problem
    that points at the API's docs."""
    if "text/html" not in request.headers.get("accept", ""):
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            "GET / is the web page (send Accept: text/html, as browsers do); the API is "
            "described at /docs and /openapi.json",
        )
    return FileResponse(_FILES["index.html"], media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """The page's scripts, styles and images."""
    path = _FILES.get(name)
    if path is None:
        raise ProblemError(404, "not-found", "Not found", f"no static file {name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)
