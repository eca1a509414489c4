"""HANDOFF_HOURS: windows in a time zone, when they are open, when the next one starts, and a clear error for a
value that is not one."""
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from bot.hours import BusinessHours
from bot.settings import BotSettings

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(*fields: int, zone: ZoneInfo = SHANGHAI) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()


def test_weekdays_nine_to_six_in_shanghai():
    hours = BusinessHours.parse("Mon-Fri 09:00-18:00 Asia/Shanghai")
    assert hours.is_open(at(2026, 12, 1, 9, 0))  # a Tuesday, at opening
    assert hours.is_open(at(2026, 12, 1, 17, 59))
    assert not hours.is_open(at(2026, 12, 1, 18, 0))  # the end is not in the window
    assert not hours.is_open(at(2026, 12, 1, 8, 59))
    assert not hours.is_open(at(2026, 12, 5, 12, 0))  # Saturday
    assert hours.is_open(at(2026, 12, 1, 1, 30, zone=ZoneInfo("UTC")))  # 09:30 in Shanghai


def test_the_next_opening():
    hours = BusinessHours.parse("Mon-Fri 09:00-18:00 Asia/Shanghai")
    assert hours.next_open(at(2026, 12, 1, 20, 0)) == datetime(2026, 12, 2, 9, 0, tzinfo=SHANGHAI)  # Tuesday evening
    assert hours.next_open(at(2026, 12, 4, 18, 30)) == datetime(2026, 12, 7, 9, 0, tzinfo=SHANGHAI)  # Friday: Monday
    assert hours.next_open(at(2026, 12, 1, 7, 0)) == datetime(2026, 12, 1, 9, 0, tzinfo=SHANGHAI)  # the same morning
    assert hours.next_open(at(2026, 12, 1, 10, 0)) == datetime(2026, 12, 1, 10, 0, tzinfo=SHANGHAI)  # open: now


def test_several_windows_lists_and_wrapping_ranges():
    hours = BusinessHours.parse("Mon,Wed 08:00-12:00 Fri-Sun 10:00-24:00 Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert hours.is_open(at(2026, 11, 30, 8, 0, zone=berlin)) and not hours.is_open(at(2026, 12, 1, 8, 0, zone=berlin))
    assert hours.is_open(at(2026, 12, 6, 23, 59, zone=berlin))  # Sunday, up to midnight
    assert hours.next_open(at(2026, 12, 1, 8, 0, zone=berlin)) == datetime(2026, 12, 2, 8, 0, tzinfo=berlin)


@pytest.mark.parametrize("value, says", [("Mon-Fri 09:00-18:00", "time zone"), ("Mon-Fri 9-18 Asia/Shanghai", "HH:MM"),
                                         ("Mon-Fri 18:00-09:00 Asia/Shanghai", "ends after it starts"),
                                         ("Mon-Fri 09:00-18:00 Mars/Olympus", "unknown time zone"),
                                         ("Mo-Fr 09:00-18:00 Asia/Shanghai", "unknown day")])
def test_a_bad_value_is_a_clear_settings_error(value, says):
    with pytest.raises(ValidationError) as error:
        BotSettings(_env_file=None, handoff_hours=value)
    assert "handoff_hours" in str(error.value) and says in str(error.value)


def test_empty_means_always_open():
    assert BotSettings(_env_file=None, handoff_hours="").business_hours is None
    saturdays = BotSettings(_env_file=None, handoff_hours=" Sat 10:00-14:00 UTC ").business_hours
    assert saturdays.is_open(at(2026, 12, 5, 12, 0, zone=ZoneInfo("UTC")))


def test_the_bot_does_not_start_with_a_bad_value(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HANDOFF_HOURS": "Mon-Fri 9-18 Asia/Shanghai", "TELEGRAM_BOT_TOKEN": "1:x"}
    done = subprocess.run([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: invalid settings: HANDOFF_HOURS: Value error, expected HH:MM-HH:MM, got '9-18'"
