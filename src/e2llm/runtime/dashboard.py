"""The operator's dashboard at `/`: a static page shipped in the package (`runtime/static/`).

No build step, no CDN: three hand-written files, read once when the app is made, so the page
works offline. The page itself holds no data and needs no key; everything it shows comes from
`GET /v1/status` (polled) and the chat box's `POST /v1/chat/completions`, which need the API key
like any client: the page asks for it and sends `Authorization: Bearer KEY` on its own fetches
(kept in the tab's sessionStorage, never in a cookie, so no other site can make the browser send
it). The headers below keep the page from running anything but its own script and from being
framed by another site.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

ASSETS = {  # name -> media type; the only files served
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
ASSET_PREFIX = "/dashboard/"
PUBLIC_PATHS = frozenset({"/", *(ASSET_PREFIX + name for name in ASSETS)})
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def add_dashboard(app: FastAPI) -> None:
    """Serve the page at `/` and its script and style sheet under `/dashboard/`."""
    static = files("e2llm.runtime") / "static"
    content = {name: (static / name).read_bytes() for name in ASSETS}

    def route(name: str) -> Callable[[], Awaitable[Response]]:
        async def asset() -> Response:
            return Response(content[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

        return asset

    app.add_api_route("/", route("index.html"), methods=["GET"], include_in_schema=False)
    for name in ASSETS:
        app.add_api_route(ASSET_PREFIX + name, route(name), methods=["GET"], include_in_schema=False)
