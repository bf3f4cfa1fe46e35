"""The operations the control channel knows: a name and a handler each, registered once.

A handler gets the context (the profile's store; its runtime when a bridge runs it) and the
request's arguments (a JSON object), and returns its result (a JSON object) or raises
BridgeError, whose message is the one line the operator reads (a ConfigError is a usage
mistake: exit 2). It must write only through `ctx.store` (`commit`, `commit_decided`), so
the change is journaled, durable before the answer, and in every later snapshot and backup.

The same handler serves both ways a write runs: inside the running bridge (the control
server calls it for a request) and in `sessions-admin` when no bridge runs (it opens the
store itself and calls it directly, `ctx.runtime` None). Adding an operation:

    @OPERATIONS.operation("pause")
    async def pause(ctx: ControlContext, args: Args) -> Result:
        key = argument(args, "key", str)
        ...
        return {"key": key}

in a module under bridge/control/ that `bridge/control/__init__.py` imports, and on the
operator's side `admin.writer.perform(profile, "pause", [{"key": ...}])`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.control.protocol import Args, BadRequest, Result
from bridge.persistence.snapshot import Progress
from bridge.store.durable import DurableStore

if TYPE_CHECKING:
    from bridge.runtime import ProfileRuntime
    from bridge.store.postgres import PostgresStore

T = TypeVar("T")


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ControlContext:
    """What an operation works on."""

    # A file store (the bridge's, or one sessions-admin opened), or the PostgreSQL store
    # sessions-admin opened (the operations admin/database.py runs there, live).
    store: DurableStore | PostgresStore
    # The running bridge's profile (replier, outbox, ...); None when sessions-admin writes
    # to a stopped profile itself.
    runtime: ProfileRuntime | None = None
    # Progress of long steps (re-encryption) on the operator's terminal; None in the bridge.
    progress: Progress | None = None
    # True once the requester hung up: a long operation stops at its next step.
    client_gone: Callable[[], bool] = _never

    @property
    def slug(self) -> str:
        return self.store.profile.slug


Handler = Callable[[ControlContext, Args], Awaitable[Result]]


class Registry:
    """Operations by name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def operation(self, name: str) -> Callable[[Handler], Handler]:
        """Register the decorated handler as operation `name`."""

        def register(handler: Handler) -> Handler:
            if name in self._handlers:
                raise ValueError(f"control operation {name!r} is registered twice")
            self._handlers[name] = handler
            return handler

        return register

    def names(self) -> list[str]:
        return sorted(self._handlers)

    async def run(self, name: str, ctx: ControlContext, args: Args) -> Result:
        handler = self._handlers.get(name)
        if handler is None:
            raise BadRequest(
                f"the bridge has no operation {name!r} (it knows {', '.join(self.names())}): "
                "is sessions-admin from a newer release than the running bridge?"
            )
        return await handler(ctx, args)


OPERATIONS = Registry()


def argument(args: Args, name: str, kind: type[T]) -> T:
    """`args[name]`, which must be a `kind` (BadRequest otherwise; a bool is no int)."""
    value: Any = args.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"bad request: argument {name!r} must be a {kind.__name__}")
    return value
