"""``GET /``: the web page (plain HTML, CSS and JavaScript from ``service/static``).

Every client that accepts HTML gets it: browsers, and ``curl`` (``Accept: */*``) too. A
client that accepts only other types (``Accept: application/json``) gets a 404 problem that
says where the page is and where the API is described. The page needs no API key to load: it
asks for one and sends it with each API call, so the API's rules (keys, owners, limits) are
the page's rules.
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

_HTML_RANGES = frozenset({"text/html", "text/*", "*/*"})

router = APIRouter(include_in_schema=False)


def accepts_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``text/html`` (RFC 9110: no header admits all)."""
    if accept is None or not accept.strip():
        return True
    for item in accept.split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        if media_range.lower() not in _HTML_RANGES:
            continue
        quality = next((p[2:] for p in parameters if p.lower().startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            return True  # a malformed weight counts as the default, 1
    return False


@router.get("/")
async def index(request: Request) -> FileResponse:
    """The web page, for every client that accepts HTML; a client that accepts only other
    types gets a 404 problem saying where the page and the API's docs are."""
    accept = request.headers.get("accept")
    if not accepts_html(accept):
        base = str(request.base_url).rstrip("/")
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            f"GET / is the web page, served as text/html, and this request accepts only "
            f"{accept!r}: open {base}/ in a browser, or send Accept: text/html. The API is "
            f"described at {base}/docs and {base}/openapi.json",
        )
    return FileResponse(_FILES["index.html"], media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """The page's scripts, styles and images."""
    path = _FILES.get(name)
    if path is None:
        raise ProblemError(404, "not-found", "Not found", f"no static file {name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)
