"""The console's files under ``/ui``: ``static/`` as it is in the package (there is no build step).

Every file is read once when the app is built, with an ETag (``If-None-Match`` answers 304) and a
gzip copy for clients that accept it. ``/ui`` redirects to ``/ui/`` (so relative URLs resolve),
``/ui/`` is ``index.html``; any other name is a file of ``static/`` or a 404. Responses say
``Cache-Control: no-cache`` (revalidate, so an upgraded package is seen at once) and carry a
Content-Security-Policy that allows only this origin: nothing is fetched from elsewhere, and a page
that tried would show the refusal in the browser's console, which the tests watch.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from autoglm.api.errors import APIError

__all__ = ["STATIC_DIR", "install_assets", "load_assets", "bundle_sizes"]

STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    gz: bytes
    etag: str
    media_type: str


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it (``js/main.js``)."""
    out: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out[path.relative_to(root).as_posix()] = Asset(body, gzip.compress(body, 9, mtime=0), etag, _TYPES[path.suffix])
    return out


def bundle_sizes(root: Path = STATIC_DIR) -> tuple[int, int]:
    """(raw bytes, gzipped bytes) of everything the console ships."""
    assets = load_assets(root)
    return sum(len(a.body) for a in assets.values()), sum(len(a.gz) for a in assets.values())


def install_assets(app: FastAPI) -> None:
    assets = load_assets()

    def serve(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise APIError(f"the console has no file {name!r}; open /ui/", 404, code="not_found")
        headers = {"etag": asset.etag, "cache-control": "no-cache", "x-content-type-options": "nosniff",
                   "vary": "accept-encoding", "referrer-policy": "no-referrer"}
        if name.endswith(".html"):
            headers["content-security-policy"] = CSP
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(asset.gz, media_type=asset.media_type, headers={**headers, "content-encoding": "gzip"})
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index(request: Request) -> Response:
        return serve("index.html", request)

    @app.get("/ui/{name:path}", include_in_schema=False)
    async def ui_file(name: str, request: Request) -> Response:
        return serve(name, request)
