"""Business hours: parsing, open/closed in the shop's own time zone (DST, holidays, past
midnight), and what the bridge does outside them in each mode, with an injected clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.hours import OpeningHours
from bridge.replies import Replier
from tests.conftest import Bridge, StartBridge, make_profile

MADRID = ZoneInfo("Europe/Madrid")
SHOP = "mon-fri 09:00-14:00,16:00-20:00; sat 10:00-14:00"


def at(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MADRID)


def test_open_and_closed_in_local_time() -> None:
    hours = OpeningHours.parse(SHOP, "Europe/Madrid")
    assert hours.is_open(at(2026, 11, 23, 9, 0))  # Monday
    assert not hours.is_open(at(2026, 11, 23, 14, 0))  # lunch
    assert hours.is_open(at(2026, 11, 23, 19, 59))
    assert not hours.is_open(at(2026, 11, 28, 14, 30))  # Saturday afternoon
    assert not hours.is_open(at(2026, 11, 29, 11, 0))  # Sunday
    # 08:30 UTC is 09:30 in Madrid in winter
    assert hours.is_open(datetime(2026, 11, 23, 8, 30, tzinfo=UTC))


def test_a_dst_change_keeps_the_shops_wall_clock() -> None:
    """Madrid moves from UTC+1 to UTC+2 on 2026-03-29: 09:00 local is 08:00 UTC on Friday
    the 27th and 07:00 UTC on Monday the 30th; the shop opens at 09:00 local on both."""
    hours = OpeningHours.parse(SHOP, "Europe/Madrid")
    assert hours.is_open(datetime(2026, 3, 27, 8, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 3, 27, 7, 30, tzinfo=UTC))
    assert hours.is_open(datetime(2026, 3, 30, 7, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 3, 30, 6, 30, tzinfo=UTC))


def test_holidays_are_closed_all_day() -> None:
    hours = OpeningHours.parse(SHOP, "Europe/Madrid", ["2026-12-25"])
    assert not hours.is_open(at(2026, 12, 25, 10, 0))  # a Friday
    assert hours.is_open(at(2026, 12, 24, 10, 0))


def test_an_interval_past_midnight_and_24_00() -> None:
    bar = OpeningHours.parse("fri 20:00-02:00; sun 00:00-24:00", "UTC")
    assert bar.is_open(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # Friday night
    assert bar.is_open(datetime(2026, 11, 28, 1, 0, tzinfo=UTC))  # Saturday 01:00
    assert not bar.is_open(datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
    assert bar.is_open(datetime(2026, 11, 29, 23, 59, tzinfo=UTC))


def test_closed_since_is_the_end_of_the_last_opening() -> None:
    hours = OpeningHours.parse(SHOP, "Europe/Madrid", ["2026-11-27"])
    assert hours.closed_since(at(2026, 11, 23, 15, 0)) == at(2026, 11, 23, 14, 0)
    assert hours.closed_since(at(2026, 11, 24, 8, 0)) == at(2026, 11, 23, 20, 0)
    # Friday is a holiday: Saturday morning's closed period began Thursday evening.
    assert hours.closed_since(at(2026, 11, 28, 9, 0)) == at(2026, 11, 26, 20, 0)
    assert hours.closed_since(at(2026, 11, 23, 10, 0)) is None


@pytest.mark.parametrize(
    ("spec", "zone", "holidays", "message"),
    [
        ("mon-fri 9-14", "UTC", [], "not an interval"),
        ("monday 09:00-14:00", "UTC", [], "write e.g."),
        ("mon 25:00-26:00", "UTC", [], "not a time of day"),
        ("mon 09:00-14:00", "Mars/Olympus", [], "IANA"),
        ("mon 09:00-14:00", "UTC", ["25/12"], "2026-12-25"),
    ],
)
def test_bad_hours_are_one_clear_line(
    spec: str, zone: str, holidays: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        OpeningHours.parse(spec, zone, holidays)


def test_hours_from_the_environment(tmp_path: Path) -> None:
    env = {
        "BRIDGE_HOURS": SHOP,
        "BRIDGE_TIMEZONE": "Europe/Madrid",
        "BRIDGE_HOLIDAYS": "2026-12-25, 2027-01-01",
        "BRIDGE_OUTSIDE_HOURS": "reply",
        "BRIDGE_OUTSIDE_HOURS_REPLY": "Abrimos a las 9",
    }
    profile = load_settings(env=env, var_dir=tmp_path).profiles[0]
    assert profile.hours is not None and profile.hours.zone == MADRID
    assert len(profile.hours.holidays) == 2
    assert (profile.outside_hours, profile.outside_hours_reply) == ("reply", "Abrimos a las 9")
    with pytest.raises(ConfigError, match="needs outside_hours_reply"):
        load_settings(env={**env, "BRIDGE_OUTSIDE_HOURS_REPLY": ""}, var_dir=tmp_path)


# -- the bridge outside hours, with a clock fixed at Monday 22:00 in Madrid -----------------

CLOSED_NOW = at(2026, 11, 23, 22, 0).timestamp()
OPEN_NOW = at(2026, 11, 23, 10, 0).timestamp()


async def shop(
    start_bridge: StartBridge, tmp_path: Path, mode: str, now: float, reply: str | None = None
) -> Bridge:
    profile = replace(
        make_profile(tmp_path),
        hours=OpeningHours.parse(SHOP, "Europe/Madrid"),
        outside_hours=mode,
        outside_hours_reply=reply,
    )
    bridge = await start_bridge(profiles=[profile])
    replier: Replier = bridge.runtimes["default"].replier
    replier._clock = lambda: now
    return bridge


def replies(bridge: Bridge) -> list[str]:
    view = bridge.state().get("34600000001")
    return [m.content for m in view.messages if m.role == "assistant"] if view else []


async def test_reply_mode_sends_the_notice_once_per_closed_period(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await shop(start_bridge, tmp_path, "reply", CLOSED_NOW, "Abrimos mañana a las 9")
    for text in ("hola", "¿seguís ahí?"):
        assert (await bridge.post_text(text)).status == 200
        await bridge.settle()
    assert replies(bridge) == ["Abrimos mañana a las 9"]
    view = bridge.state().get("34600000001")
    assert view is not None and [m.role for m in view.messages].count("user") == 2


async def test_silent_mode_records_and_does_not_answer(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await shop(start_bridge, tmp_path, "silent", CLOSED_NOW)
    await bridge.post_text("hola")
    await bridge.settle()
    assert replies(bridge) == []
    view = bridge.state().get("34600000001")
    assert view is not None and view.messages[-1].content == "hola"


async def test_assistant_mode_and_open_hours_answer_as_usual(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await shop(start_bridge, tmp_path, "assistant", CLOSED_NOW)
    await bridge.post_text("hola")
    await bridge.settle()
    assert replies(bridge) == ["Echo: hola"]


async def test_inside_hours_the_assistant_answers(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await shop(start_bridge, tmp_path, "silent", OPEN_NOW)
    await bridge.post_text("hola")
    await bridge.settle()
    assert replies(bridge) == ["Echo: hola"]
    ready = await (await bridge.client.get("/readyz")).json()
    assert ready["profiles"]["default"]["hours"] in ("open", "closed")
