"""create_assistant: the configured kind picks the backend; bad settings are ConfigErrors."""

from __future__ import annotations

import pytest

from bridge.assistants import (
    EchoAssistant,
    HttpAssistant,
    OpenAIAssistant,
    create_assistant,
)
from bridge.config import AssistantConfig
from bridge.errors import ConfigError


async def test_default_config_gives_the_echo_assistant() -> None:
    assistant = create_assistant(AssistantConfig())
    assert isinstance(assistant, EchoAssistant)
    assert assistant.kind == "echo"


async def test_openai_kind_gives_openai_assistant_at_the_completions_url() -> None:
    assistant = create_assistant(
        AssistantConfig(kind="openai", url="http://127.0.0.1:11434", model="llama3.2")
    )
    assert isinstance(assistant, OpenAIAssistant)
    assert (assistant.kind, assistant.model) == ("openai", "llama3.2")
    assert str(assistant.url) == "http://127.0.0.1:11434/v1/chat/completions"
    await assistant.close()


async def test_http_kind_gives_http_assistant_at_the_url_as_given() -> None:
    assistant = create_assistant(AssistantConfig(kind="http", url="https://bot.example/reply"))
    assert isinstance(assistant, HttpAssistant)
    assert assistant.kind == "http"
    assert str(assistant.url) == "https://bot.example/reply"
    await assistant.close()


@pytest.mark.parametrize("kind", ["openai", "http"])
def test_network_backend_without_url_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError, match="needs a URL"):
        create_assistant(AssistantConfig(kind=kind))


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown assistant 'gpt'"):
        create_assistant(AssistantConfig(kind="gpt"))


def test_api_key_does_not_show_in_the_config_repr() -> None:
    # The key travels inside AssistantConfig; a logged config must not reveal it.
    assert "sk-secret" not in repr(
        AssistantConfig(kind="openai", url="http://h", api_key="sk-secret")
    )
