"""The operator's end of the control channel: one request to the running bridge, blocking
until its answer (sessions-admin is a plain synchronous program).

`timeout` is how long the bridge may stay silent: it sends an empty line every second while
an operation runs, so silence that long means it is hung or stopped (SIGSTOP), and the
request fails with one line instead of waiting forever. Closing the connection then tells
the bridge, should it wake up, not to start the operation.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from bridge.control.protocol import (
    MAX_ANSWER,
    MAX_REQUEST,
    Args,
    ControlError,
    Result,
    address,
    decode_answer,
    encode_request,
)
from bridge.persistence import layout

RETRY_SECONDS = 0.1  # between attempts to reach a bridge that is starting or stopping


class NoBridge(Exception):
    """No bridge holds the profile (any more): the caller writes to the store itself."""


def request(state_dir: Path, slug: str, op: str, args: Args, timeout: float) -> Result:
    """Send `op` to the bridge that holds the profile in `state_dir`; its result, or
    ControlError (BadRequest, exit 2, for a usage mistake) with the one line to show.
    NoBridge when the profile lock is free."""
    payload = encode_request(op, args)
    if len(payload) > MAX_REQUEST:
        raise ControlError(
            f"the request is {len(payload):,} bytes, more than the control channel takes "
            f"({MAX_REQUEST:,}); stop the bridge and run the command again to write directly"
        )
    path = layout.control_socket_path(state_dir)
    sock, holder = _connect(path, state_dir, slug, timeout)
    with sock:
        try:
            # If it stopped reading, its answer (a refusal) may be there all the same.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
            line = _read_answer(sock)
        except TimeoutError:
            raise ControlError(
                f"the bridge (pid {holder}) did not answer within {timeout:g} s on {path}: is "
                "it hung or stopped (SIGSTOP)? sessions-admin wrote nothing; the bridge will "
                "not start this command later, but one it had begun may complete"
            ) from None
        except OSError:
            line = None  # reset or broken pipe: it went away
    if line is None:
        raise ControlError(
            f"the bridge (pid {holder}) closed the connection without answering (stopped or "
            "crashed?); the command may or may not have been carried out: check before "
            "repeating it"
        )
    return decode_answer(line)


def _connect(path: Path, state_dir: Path, slug: str, timeout: float) -> tuple[socket.socket, int]:
    """A connection to the bridge holding the profile, and its pid. A bridge that holds the
    lock but has no socket yet (starting) or any more (stopping) is retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        holder = layout.lock_holder(state_dir)
        if holder is None:
            raise NoBridge
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with address(path) as where:
                sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()  # not listening (yet, or any more), or a socket a crash left
        except PermissionError:
            sock.close()
            raise ControlError(
                f"cannot connect to the bridge's control socket {path}: permission denied; "
                "run sessions-admin as the bridge's user (e.g. `runuser -u whatsapp-bridge -- "
                "sessions-admin ...`) or as root"
            ) from None
        except TimeoutError:
            sock.close()
            raise ControlError(
                f"the bridge (pid {holder}) did not accept a connection within {timeout:g} s "
                f"on {path}: is it hung or stopped (SIGSTOP)? nothing was changed"
            ) from None
        except BaseException:
            sock.close()
            raise
        else:
            return sock, holder
        if time.monotonic() >= deadline:
            raise ControlError(
                f"the bridge (pid {holder}) holds profile {slug!r} but does not answer on "
                f"{path} (still starting? a release without a control channel?); nothing was "
                "changed"
            )
        time.sleep(RETRY_SECONDS)


def _read_answer(sock: socket.socket) -> bytes | None:
    """The answer line, skipping the heartbeats; None if the stream ends first. Each read
    waits at most the socket's timeout."""
    buffer = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                return line
        if len(buffer) > MAX_ANSWER:
            raise ControlError("the bridge's answer is larger than expected")
