"""The listening sockets: inherited from systemd, or bound first, before anything is written.

Socket activation (systemd's `sd_listen_fds` protocol: `LISTEN_PID` names this process,
`LISTEN_FDS` counts the sockets passed from fd 3 on, `LISTEN_FDNAMES` names them): the
listening socket belongs to systemd and outlives the bridge, so during a restart connections
wait in the kernel's backlog instead of being refused. Without it, a busy port is the most
common start-up failure; found only after the profiles were loaded, it used to leave
generated secrets, keys and a snapshot behind, so `bridge serve` binds here first and hands
the sockets to the server, which serves exactly what `loop.create_server(host, port)` would
have: every address the host resolves to.
"""

from __future__ import annotations

import os
import socket

from bridge.config import Settings
from bridge.errors import ConfigError

# aiohttp's default backlog for TCPSite.
BACKLOG = 128
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START


def inherited(settings: Settings) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (those named `http`, or all of
    them when none is named), or [] when it passed none; ConfigError for a passed fd that is
    not a listening stream socket."""
    if settings.listen_pid != str(os.getpid()) or not settings.listen_fds:
        return []
    try:
        count = int(settings.listen_fds)
    except ValueError:
        raise ConfigError(f"LISTEN_FDS={settings.listen_fds!r} is not a number") from None
    names = (settings.listen_fdnames or "").split(":")
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    if "http" in names:
        fds = [fd for fd, name in zip(fds, names, strict=False) if name == "http"]
    sockets = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            raise ConfigError(f"socket activation: fd {fd}: {exc.strerror or exc}") from None
        if sock.type != socket.SOCK_STREAM or not listening:
            raise ConfigError(f"socket activation: fd {fd} is not a listening stream socket")
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


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
