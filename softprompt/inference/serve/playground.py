"""The playground page at ``/``: plain HTML, CSS and JavaScript shipped in the package.

No build step, no CDN, nothing fetched from elsewhere at run time. The page is a client of the
``/v1`` API like any other (it sends the key typed into it as ``Authorization: Bearer``), so
serving it exposes nothing the API does not. A strict Content-Security-Policy keeps the page to
this origin: no inline script, no third-party host, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve ``index.html`` at ``/`` and its script and style sheet under ``/static/``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)
