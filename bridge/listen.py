"""Bind the listening sockets first, before anything is written.

A busy port is the most common start-up failure; found only after the profiles were loaded,
it used to leave generated secrets, keys and a snapshot behind. `bridge serve` binds here
first and hands the sockets to the server (aiohttp's `SockSite`), which serves exactly what
`loop.create_server(host, port)` would have: every address the host resolves to.
"""

from __future__ import annotations

import socket

from bridge.errors import ConfigError

# aiohttp's default backlog for TCPSite.
BACKLOG = 128


def bind(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets for `host:port`; ConfigError (one line) when the port is taken."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # As asyncio's create_server: reuse TIME_WAIT ports, one socket per family.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets
