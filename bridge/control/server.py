"""The control channel of a running bridge: a unix socket in the profile directory.

Operators' writes (sessions-admin `delete`, `prune`, `import`, `rotate-key`) reach the bridge
here while it runs, so the store keeps exactly one writer; the operations are registry.py's,
the format protocol.py's. No network listener is involved.

Only the profile's owner gets through: the socket is 0600 inside the 0700 profile directory,
and each connection's peer credentials (SO_PEERCRED, set by the kernel at connect time) must
be the bridge's own uid or root, so a socket made reachable by mistake still refuses others.
It is created once the store is open (bound under a temp name, made 0600, then renamed over
`control.sock`: a socket file a kill -9 left behind is replaced in one step) and removed when
the bridge stops. Operations run one at a time, in order of arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from dataclasses import replace

from bridge.control.protocol import (
    HEARTBEAT,
    MAX_REQUEST,
    REQUEST_TIMEOUT,
    address,
    decode_request,
    encode_error,
    encode_result,
)
from bridge.control.registry import OPERATIONS, ControlContext, Registry
from bridge.errors import BridgeError, ConfigError, StorageUnavailableError
from bridge.ops.logs import get_logger
from bridge.persistence import layout
from bridge.persistence.files import temp_path

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlServer:
    """Serves `registry`'s operations on `ctx` at the profile's `control.sock`."""

    def __init__(self, ctx: ControlContext, registry: Registry = OPERATIONS) -> None:
        self._ctx = ctx
        self._registry = registry
        self.path = layout.control_socket_path(ctx.store.profile.state_dir)
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()
        self._log = get_logger(profile=ctx.slug)

    async def start(self) -> None:
        """Listen at `control.sock` (StorageUnavailableError, exit 2, when that fails)."""
        tmp = temp_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            tmp.unlink(missing_ok=True)
            with address(tmp) as where:
                sock.bind(where)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            self._inode = os.stat(self.path).st_ino
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._handle, sock=sock, limit=MAX_REQUEST
            )
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageUnavailableError(
                f"cannot create the control socket {self.path}: {exc.strerror or exc}"
            ) from None
        self._log.info("control_listening", socket=str(self.path))

    async def stop(self, timeout: float) -> None:
        """Stop accepting and remove the socket; let operations under way finish (bounded)."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        self._remove_socket()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                self._log.warning("control_requests_cancelled_at_stop", requests=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)

    def _remove_socket(self) -> None:
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass  # gone already; a stale one is replaced at the next start anyway

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        started = time.monotonic()
        op = "-"
        try:
            answer = await self._answer(reader, writer)
            if answer is None:
                return
            op, line, code = answer
            writer.write(line)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
            self._log.info(
                "control_request",
                op=op,
                exit=code,
                seconds=round(time.monotonic() - started, 3),
            )
        except (OSError, TimeoutError):
            pass  # the requester hung up: nobody to tell
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, bytes, int] | None:
        """Run the connection's request: (operation, answer line, exit code), or None when
        there is nobody to answer."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None  # hung up before a whole request: nothing to do
        except asyncio.LimitOverrunError:
            return "-", encode_error(f"request larger than {MAX_REQUEST} bytes", 2), 2
        except TimeoutError:
            return "-", encode_error(f"no request within {REQUEST_TIMEOUT:g} s", 2), 2
        # Checked once the request is in (and not looked at): the refusal then reaches the
        # requester instead of a reset of the connection that its unread bytes would cause.
        refusal = self._refusal(writer)
        if refusal is not None:
            return "-", encode_error(refusal, 1), 1
        # The requester keeps its side open while it waits: the end of the stream (or
        # anything more) means it gave up, and nobody would read the outcome.
        gone = asyncio.ensure_future(reader.read(1))
        heartbeat = asyncio.ensure_future(self._heartbeat(writer, gone))
        op = "-"
        try:
            op, args = decode_request(line)
            async with self._one_at_a_time:
                await asyncio.sleep(0)  # an end of stream already read shows now
                if gone.done() or _hung_up(writer):
                    self._log.warning("control_request_abandoned", op=op)
                    return None
                ctx = replace(self._ctx, client_gone=gone.done)
                result = await self._registry.run(op, ctx, args)
            return op, encode_result(result), 0
        except BridgeError as exc:
            code = 2 if isinstance(exc, ConfigError) else 1
            return op, encode_error(str(exc), code), code
        except Exception:
            self._log.exception("control_request_failed", op=op)
            return (
                op,
                encode_error(f"internal error in the bridge during {op!r}: see its log", 1),
                1,
            )
        finally:
            heartbeat.cancel()
            gone.cancel()
            await asyncio.gather(heartbeat, gone, return_exceptions=True)

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        """Why this peer may not use the channel, or None: only our uid and root may."""
        sock = writer.get_extra_info("socket")
        pid, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        ours = os.geteuid()
        if uid in (ours, 0):
            return None
        self._log.warning("control_refused", uid=uid, pid=pid)
        return (
            f"permission denied: this bridge takes control requests from uid {ours} (its own) "
            f"and root only, not uid {uid}"
        )

    @staticmethod
    async def _heartbeat(writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]) -> None:
        """An empty line every HEARTBEAT while the operation runs: alive, still working."""
        while not gone.done() and not writer.is_closing():
            await asyncio.sleep(HEARTBEAT)
            writer.write(b"\n")


def _hung_up(writer: asyncio.StreamWriter) -> bool:
    """The requester closed its end (or sent more than its request), though the transport
    may not have read that far yet: a look at the socket's queue without taking from it."""
    fd = os.dup(writer.get_extra_info("socket").fileno())
    with socket.socket(fileno=fd) as sock:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": the end; else extra
        except BlockingIOError:
            return False  # nothing queued: it is waiting for the answer
        except OSError:
            pass  # reset
        return True
