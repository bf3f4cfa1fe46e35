"""HTTP against hostile or slow clients: whatever bytes arrive, the answer is never a 5xx.

The bridge faces the internet (behind a TLS proxy at most), so any byte may arrive in any
header. aiohttp decodes header bytes that are not UTF-8 to surrogates; a handler that
encodes such a value again, or echoes it into a response, fails with a 500. This module
holds what every route shares to keep that from happening.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect:` handling for every route: "100-continue" is answered as aiohttp would;
    anything else is a 417. (aiohttp's own handler puts the header's value into its error
    text, which fails to encode, a 500, when the value holds a byte that is not UTF-8.)"""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None
    return web.json_response({"error": "unsupported Expect header"}, status=417)


def add_fallback_route(app: web.Application) -> None:
    """Answer paths and methods no route takes (404, 405) through a route of our own, so they
    too get `expect_continue`. Add it after every other route."""

    async def fallback(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is fallback_resource:
                continue
            _match, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    fallback_resource = app.router.add_resource("/{path:.*}")
    fallback_resource.add_route(hdrs.METH_ANY, fallback, expect_handler=expect_continue)
