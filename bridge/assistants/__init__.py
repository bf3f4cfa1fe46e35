"""Assistant backends: something that turns a conversation's history into a reply."""

from __future__ import annotations

from bridge.assistants.base import Assistant, Reply, Turn, TurnLike
from bridge.assistants.echo import EchoAssistant
from bridge.assistants.http import HttpAssistant
from bridge.assistants.openai import OpenAIAssistant
from bridge.config import ASSISTANT_KINDS, AssistantConfig
from bridge.errors import ConfigError

__all__ = [
    "Assistant",
    "EchoAssistant",
    "HttpAssistant",
    "OpenAIAssistant",
    "Reply",
    "Turn",
    "TurnLike",
    "create_assistant",
]


def create_assistant(config: AssistantConfig) -> Assistant:
    """The backend `config.kind` names; a bad URL or unknown kind is a `ConfigError`.

    Nothing connects here: HTTP backends open their session on the first reply, inside the
    running event loop.
    """
    if config.kind == "echo":
        return EchoAssistant()
    if config.kind == "openai":
        return OpenAIAssistant(config)
    if config.kind == "http":
        return HttpAssistant(config)
    raise ConfigError(f"unknown assistant {config.kind!r} (choose {', '.join(ASSISTANT_KINDS)})")
