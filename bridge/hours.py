"""Business hours: when a profile is open, in its own time zone, holidays included.

Written as a shop writes them on its door: `"mon-fri 09:00-14:00,16:00-20:00; sat 10:00-14:00"`
(groups separated by `;`, each a day or a day range and its intervals). Times are local wall
clock in the profile's IANA time zone (`zoneinfo`), so a DST change moves nothing a shop
keeper would not expect; an interval that ends at or before it starts runs past midnight.
Holidays are whole local dates, closed all day.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_GROUP = re.compile(r"^\s*([a-z]{3})(?:\s*-\s*([a-z]{3}))?\s+(.+?)\s*$")
_INTERVAL = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_LOOKBACK_DAYS = 14  # how far back `closed_since` looks for the last opening


@dataclass(frozen=True, slots=True)
class Interval:
    start: time
    end: time | None  # None: midnight at the end of the day (written 24:00)


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """Open intervals per weekday (0 = Monday) in `zone`, and closed dates."""

    spec: str
    zone: ZoneInfo
    week: tuple[tuple[Interval, ...], ...]
    holidays: frozenset[date]

    @classmethod
    def parse(cls, spec: str, timezone: str = "UTC", holidays: Sequence[str] = ()) -> OpeningHours:
        """ConfigError (one line, naming the bad part) for anything it cannot read."""
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone {timezone!r} is not an IANA time zone name") from None
        week: list[list[Interval]] = [[] for _ in DAYS]
        for group in filter(None, (g.strip().lower() for g in spec.split(";"))):
            match = _GROUP.match(group)
            if (
                match is None
                or match.group(1) not in DAYS
                or (match.group(2) is not None and match.group(2) not in DAYS)
            ):
                raise ConfigError(f"hours {group!r}: write e.g. 'mon-fri 09:00-14:00,16:00-20:00'")
            first = DAYS.index(match.group(1))
            last = DAYS.index(match.group(2) or match.group(1))
            days = range(first, last + 1) if first <= last else [*range(first, 7), *range(last + 1)]
            intervals = [_interval(part, group) for part in match.group(3).split(",")]
            for day in days:
                for start, end in intervals:
                    if end is not None and end <= start:  # runs past midnight
                        week[day].append(Interval(start, None))
                        week[(day + 1) % 7].append(Interval(time(0), end))
                    else:
                        week[day].append(Interval(start, end))
        if not any(week):
            raise ConfigError(f"hours {spec!r}: no opening interval")
        closed = set()
        for text in holidays:
            try:
                closed.add(date.fromisoformat(text.strip()))
            except ValueError:
                raise ConfigError(f"holiday {text!r}: write a date like 2026-12-25") from None
        return cls(spec, zone, tuple(tuple(d) for d in week), frozenset(closed))

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        if local.date() in self.holidays:
            return False
        now = local.time().replace(tzinfo=None)
        return any(
            i.start <= now and (i.end is None or now < i.end) for i in self.week[local.weekday()]
        )

    def describe(self, at: datetime) -> str:
        """`open` or `closed` now, for /readyz and `sessions-admin stats`."""
        return "open" if self.is_open(at) else "closed"

    def closed_since(self, at: datetime) -> datetime | None:
        """When the closed period `at` falls in began (the end of the last opening), or None
        if `at` is open or no opening in the last two weeks."""
        if self.is_open(at):
            return None
        local = at.astimezone(self.zone)
        for back in range(_LOOKBACK_DAYS + 1):
            day = local.date() - timedelta(days=back)
            if day in self.holidays:
                continue
            ends = [
                datetime.combine(day, i.end, self.zone)
                if i.end is not None
                else datetime.combine(day + timedelta(days=1), time(0), self.zone)
                for i in self.week[day.weekday()]
            ]
            past = [end for end in ends if end <= local]
            if past:
                return max(past)
        return None


def _interval(text: str, group: str) -> tuple[time, time | None]:
    match = _INTERVAL.match(text)
    if match is None:
        raise ConfigError(f"hours {group!r}: {text.strip()!r} is not an interval like 09:00-14:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ConfigError(f"hours {group!r}: {text.strip()!r} is not a time of day")
    return time(h1, m1), None if h2 == 24 else time(h2, m2)
