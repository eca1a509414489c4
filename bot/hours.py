"""The operators' business hours (HANDOFF_HOURS): outside them a handoff waits, and the customer is told when
someone will answer.

    hours = BusinessHours.parse("Mon-Fri 09:00-18:00 Asia/Shanghai")
    hours.is_open(time.time())        # a Unix time
    hours.next_open(time.time())      # when the next window starts, in the hours' zone (now when open)

A value is one or more windows, `DAYS HH:MM-HH:MM`, then an IANA time zone: "Mon-Fri 09:00-18:00 Sat 10:00-14:00
Europe/Berlin". DAYS is a day (Mon), a range (Mon-Fri, Fri-Mon wraps) or a comma-separated list of them
(Mon,Wed,Fri-Sat); a window ends after it starts, on the same day (24:00 is the day's end).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIMES = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 is Monday
    start: int  # minutes after midnight
    end: int


@dataclass(frozen=True)
class BusinessHours:
    windows: tuple[Window, ...]
    zone: ZoneInfo

    @classmethod
    def parse(cls, spec: str) -> BusinessHours:
        """ValueError saying what is wrong, with an example of a right value."""
        *parts, zone = spec.split() or [""]
        if not parts or len(parts) % 2:
            raise ValueError(f"expected windows and a time zone, e.g. 'Mon-Fri 09:00-18:00 Asia/Shanghai', got {spec!r}")
        return cls(tuple(Window(_days(days), *_times(times)) for days, times in zip(parts[::2], parts[1::2])), _zone(zone))

    def is_open(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, self.zone)
        minute = local.hour * 60 + local.minute
        return any(local.weekday() in w.days and w.start <= minute < w.end for w in self.windows)

    def next_open(self, now: float) -> datetime:
        """The start of the next window (the moment itself while a window is open), in the hours' zone."""
        local = datetime.fromtimestamp(now, self.zone)
        if self.is_open(now):
            return local
        for ahead in range(8):
            day = (local + timedelta(days=ahead)).date()
            starts = [datetime(day.year, day.month, day.day, w.start // 60, w.start % 60, tzinfo=self.zone)
                      for w in self.windows if day.weekday() in w.days]
            if later := [s for s in starts if s > local]:
                return min(later)
        raise AssertionError("every window has at least one day")


def _days(spec: str) -> frozenset[int]:
    days: set[int] = set()
    for item in spec.lower().split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"unknown day in {spec!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun, ranges (Mon-Fri) and commas")
        start, end = DAYS.index(first), DAYS.index(last or first)
        days.update(d % 7 for d in range(start, end + (7 if end < start else 0) + 1))
    return frozenset(days)


def _times(spec: str) -> tuple[int, int]:
    found = TIMES.fullmatch(spec)
    if found is None:
        raise ValueError(f"expected HH:MM-HH:MM, got {spec!r}")
    h1, m1, h2, m2 = map(int, found.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or not 0 <= start < end <= DAY_MINUTES:
        raise ValueError(f"{spec!r}: a window ends after it starts, on the same day (00:00-24:00 at most)")
    return start, end


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Asia/Shanghai or UTC)") from None
