"""The control channel's wire format: one request per connection, one answer.

Request: one line of JSON, `{"v": 1, "op": NAME, "args": {...}}`, at most MAX_REQUEST bytes,
sent within REQUEST_TIMEOUT of connecting. The client keeps its side open while it waits: when
it hangs up (gave up, killed), the bridge sees the end of the stream and does not start the
operation, or a long one stops at its next step.

Answer: empty lines, one every HEARTBEAT while the operation runs (so a client tells a long
operation from a hung bridge by silence alone), then one line of JSON:
`{"ok": true, "result": {...}}` or `{"ok": false, "error": "one line", "exit": 1 or 2}`.

Socket paths are limited to about 107 bytes (sockaddr_un); a longer one is reached through
its directory's descriptor (`/proc/self/fd/N/control.sock`), see `address`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from bridge.errors import BridgeError, ConfigError

VERSION = 1
MAX_REQUEST = 64 * 1024 * 1024  # an import goes in parts of about IMPORT_PART bytes
MAX_ANSWER = 1024 * 1024
REQUEST_TIMEOUT = 10.0  # seconds a connected client has to send its request
HEARTBEAT = 1.0  # seconds between the empty lines sent while an operation runs
_SUN_PATH = 100  # bytes of sockaddr_un's path used directly (107 minus a margin)

Args = Mapping[str, Any]
Result = dict[str, Any]


class ControlError(BridgeError):
    """A control request that failed or was refused: the answer's one line and exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadRequest(ControlError, ConfigError):
    """A request the bridge cannot take (malformed, unknown operation, bad arguments): the
    operator's tool and the bridge disagree, or the arguments are wrong; exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


def encode_request(op: str, args: Args) -> bytes:
    return orjson.dumps({"v": VERSION, "op": op, "args": dict(args)}) + b"\n"


def decode_request(line: bytes) -> tuple[str, Args]:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadRequest("bad request: not JSON") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise BadRequest(
            f"bad request: expected a version {VERSION} request (is sessions-admin from the "
            "same release as the running bridge?)"
        )
    op, args = data.get("op"), data.get("args", {})
    if not isinstance(op, str) or not isinstance(args, dict):
        raise BadRequest("bad request: expected an operation name and an object of arguments")
    return op, args


def encode_result(result: Result) -> bytes:
    return orjson.dumps({"ok": True, "result": result}) + b"\n"


def encode_error(message: str, exit_code: int) -> bytes:
    # One line: the operator's terminal shows it as the whole error.
    line = " ".join(message.split("\n")) if "\n" in message else message
    return orjson.dumps({"ok": False, "error": line, "exit": exit_code}) + b"\n"


def decode_answer(line: bytes) -> Result:
    """The result, or the bridge's error raised as ControlError (BadRequest for exit 2)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ControlError("the bridge's answer is not JSON") from None
    if not isinstance(data, dict):
        raise ControlError("the bridge's answer is not a JSON object")
    if data.get("ok") is True and isinstance(data.get("result"), dict):
        return dict(data["result"])
    message = str(data.get("error") or "the bridge refused the request without a reason")
    if data.get("exit") == 2:
        raise BadRequest(message)
    raise ControlError(message)


@contextmanager
def address(path: Path) -> Iterator[str]:
    """An address for bind()/connect() that reaches `path` whatever its length."""
    if len(os.fsencode(path)) <= _SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
