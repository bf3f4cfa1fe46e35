"""The mode gates and keyword matching, as pure functions."""

from __future__ import annotations

import pytest

from bridge.conversations import (
    ASSISTANT,
    OPTED_OUT,
    PAUSED,
    Conversation,
    ConversationMode,
    Message,
)
from bridge.modes import Keywords, normalize, outbox_hold, owed_answer
from bridge.records import MessageAdded, ModeChanged, OutboxItem, OutboxQueued
from bridge.state import State

T = 1_800_000_000_000
KEY = "34600000001"


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("HUMANO", "humano"),
        ("  Humano \n", "humano"),
        ("¡Húmano!", "humano"),
        ("hablar   con   AGENTE", "hablar con agente"),
        ("Stop.", "stop"),
        ("ＳＴＯＰ", "stop"),  # full-width letters, as some keyboards type them
        ("Ça va", "ca va"),
        ("...", ""),
    ],
)
def test_normalize_ignores_case_accents_spacing_and_punctuation_around(
    typed: str, normalized: str
) -> None:
    assert normalize(typed) == normalized


def test_keywords_match_the_whole_message_only() -> None:
    keywords = Keywords(("humano", "Hablar con una persona"), ("STOP", "BAJA"), ("START", "alta"))
    assert keywords.match("HUMANO") == "handoff"
    assert keywords.match("hablar con una PERSONA") == "handoff"
    assert keywords.match("quiero hablar con un humano") is None
    assert keywords.match("stop") == "opt_out"
    assert keywords.match(" Baja ") == "opt_out"
    assert keywords.match("Álta") == "opt_in"
    assert keywords.match("stopped") is None
    assert keywords.match("humano " * 20) is None  # too long to be a keyword


def test_a_word_in_two_lists_opts_out() -> None:
    assert Keywords(("stop",), ("stop",), ()).match("STOP") == "opt_out"


def test_a_pause_with_an_end_reads_as_assistant_from_then_on() -> None:
    mode = ConversationMode(PAUSED, T, "ana", until_ms=T + 1000)
    assert mode.current(T + 999) == PAUSED
    assert mode.current(T + 1000) == ASSISTANT
    assert mode.assistant_since(T + 999) is None
    assert mode.assistant_since(T + 5000) == T + 1000


def conversation(last_user_at: int, mode: ConversationMode | None) -> Conversation:
    conv = Conversation(KEY, None, T)
    conv.append(Message("user", "hola", last_user_at, id="wamid.1"), last_user_at)
    conv.mode = mode
    return conv


def test_after_a_restart_the_assistant_owes_only_what_came_after_it_took_over() -> None:
    assert owed_answer(conversation(T, None), T + 10) is not None
    paused = ConversationMode(PAUSED, T - 10, "ana")
    assert owed_answer(conversation(T, paused), T + 10) is None
    # Resumed after the message came: the person answered it (or chose not to).
    resumed = ConversationMode(ASSISTANT, T + 5, "ana")
    assert owed_answer(conversation(T, resumed), T + 10) is None
    assert owed_answer(conversation(T + 6, resumed), T + 10) is not None
    # A pause that ended by itself: what came after its end is owed, what came before not.
    ended = ConversationMode(PAUSED, T - 10, "ana", until_ms=T + 5)
    assert owed_answer(conversation(T, ended), T + 10) is None
    assert owed_answer(conversation(T + 6, ended), T + 10) is not None
    assert owed_answer(conversation(T, ConversationMode(OPTED_OUT, T - 1, "user")), T + 1) is None


def test_only_the_assistants_own_replies_are_held_back() -> None:
    state = State()
    state.apply(1, MessageAdded(KEY, Message("user", "hola", T, id="wamid.1")))
    for rid, extra in (
        ("out.1", None),
        ("op.1", {"operator": "ana"}),
        ("out.2", {"auto": "opt_out"}),
    ):
        state.apply(
            0,
            MessageAdded(KEY, Message("assistant", "x", T, id=rid, status="pending", extra=extra)),
        )
        state.apply(0, OutboxQueued(OutboxItem(rid, KEY, KEY, "x", T)))
    items = {i.id: i for i in state.pending_outbox()}
    assert all(outbox_hold(state, item, T) is None for item in items.values())
    state.apply(9, ModeChanged(KEY, ConversationMode(OPTED_OUT, T, "user")))
    assert outbox_hold(state, items["out.1"], T) == "not sent: conversation opted_out"
    assert outbox_hold(state, items["op.1"], T) is None
    assert outbox_hold(state, items["out.2"], T) is None
