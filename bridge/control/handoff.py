"""Operators' actions over the control channel: pause, resume, send (bridge/operators.py).

The running bridge performs them through its own `Operators` (so a message sent goes out at
once through its outbox); with no bridge running, sessions-admin performs them on the store
it opened, and a message sent waits in the durable outbox for the next start.
"""

from __future__ import annotations

from bridge.control.protocol import Args, BadRequest, Result
from bridge.control.registry import OPERATIONS, ControlContext, argument
from bridge.operators import Operators, now_ms
from bridge.whatsapp.template import TemplateError, template_from_json


def _operators(ctx: ControlContext) -> Operators:
    if ctx.runtime is not None:
        return ctx.runtime.operators
    return Operators(ctx.store, ctx.store.profile)


def _optional(args: Args, name: str) -> str | None:
    value = args.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"bad request: argument {name!r} must be a str")
    return value


@OPERATIONS.operation("pause")
async def pause(ctx: ControlContext, args: Args) -> Result:
    until = args.get("until_ms")
    if until is not None and (not isinstance(until, int) or isinstance(until, bool)):
        raise BadRequest("bad request: argument 'until_ms' must be an int")
    outcome = await _operators(ctx).pause(
        argument(args, "key", str),
        until_ms=until,
        who=argument(args, "who", str),
        why=_optional(args, "why"),
    )
    return {**outcome.to_json(now_ms()), "running": ctx.runtime is not None}


@OPERATIONS.operation("resume")
async def resume(ctx: ControlContext, args: Args) -> Result:
    outcome = await _operators(ctx).resume(
        argument(args, "key", str), who=argument(args, "who", str), why=_optional(args, "why")
    )
    return {**outcome.to_json(now_ms()), "running": ctx.runtime is not None}


@OPERATIONS.operation("send")
async def send(ctx: ControlContext, args: Args) -> Result:
    """`text`, or `template` (`{"name", "language", "params"}`): one of the two."""
    key, who = argument(args, "key", str), argument(args, "who", str)
    if args.get("template") is not None:
        if args.get("text") is not None:
            raise BadRequest("bad request: send either a text or a template, not both")
        try:
            template = template_from_json(args["template"])
        except TemplateError as exc:
            raise BadRequest(str(exc)) from None
        outcome = await _operators(ctx).send_template(key, template, operator=who)
    else:
        outcome = await _operators(ctx).send(key, argument(args, "text", str), operator=who)
    return {**outcome.to_json(now_ms()), "running": ctx.runtime is not None}
