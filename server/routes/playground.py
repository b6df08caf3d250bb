"""The browser playground and event viewer: static files shipped in `server/static/`.

`/` serves the page, `/static/...` its ES modules and CSS. No build step, no CDN. Neither path
is under `/v1/`, so the API-key middleware leaves them open (the page asks for a key itself).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "routes"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_NO_CACHE = {"Cache-Control": "no-cache"}


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_CACHE)


async def playground_redirect(request: Request) -> Response:
    return RedirectResponse("/", status_code=307)


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET", "HEAD"]),
    Route("/playground", playground_redirect, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
]
