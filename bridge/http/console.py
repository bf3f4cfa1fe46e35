"""The operator console at `/console`: one static page (HTML, CSS and a little JavaScript in
`static/`, no build step) that works through the API with the token the operator types.

Served only when an API token is configured (404 otherwise, like the API). The page is
public (it holds no data; the token is asked for, and kept in the tab's sessionStorage), and
locked down by headers: scripts and styles only from this origin, no inline script (so a
message that contains markup could not run even if it were ever put into the page as HTML;
the console sets every text with textContent), no framing, no referrer.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bridge.http.guard import expect_continue

STATIC = Path(__file__).parent / "static"
FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_routes(app: web.Application, enabled: bool) -> None:
    """`/console` and its two files, read once now; nothing without an API token."""
    if not enabled:
        return
    page = (STATIC / "index.html").read_bytes()
    assets = {name: ((STATIC / name).read_bytes(), kind) for name, kind in FILES.items()}

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            body=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    async def to_index(request: web.Request) -> web.Response:
        # The page's links are relative to /console.
        raise web.HTTPFound("/console")

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)

    expect = expect_continue
    app.router.add_get("/console", index, expect_handler=expect)
    app.router.add_get("/console/", to_index, expect_handler=expect)
    app.router.add_get("/console/{name}", asset, expect_handler=expect)
