"""GYRINX_TEST_CLOCK_AT (tests/conftest.py): a test starts next to the next full hour, UTC
midnight or new year, at the offsets asked for, counted from the clock when it starts
(docs/testing.md, "Time")."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import clock_at, clock_offset, next_boundary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.clock


@pytest.mark.parametrize(("mode", "now", "boundary"), [
    ("hour", datetime(2031, 3, 4, 5, 0, 0, tzinfo=UTC), datetime(2031, 3, 4, 6, tzinfo=UTC)),
    ("hour", datetime(2031, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
     datetime(2032, 1, 1, tzinfo=UTC)),
    ("midnight", datetime(2031, 2, 28, 0, 0, 1, tzinfo=UTC), datetime(2031, 3, 1, tzinfo=UTC)),
    ("midnight", datetime(2032, 2, 28, 12, tzinfo=UTC), datetime(2032, 2, 29, tzinfo=UTC)),
    # At least 365 days ahead: 1 January 2032 is 364 days after 2 January 2031.
    ("newyear", datetime(2031, 1, 2, tzinfo=UTC), datetime(2033, 1, 1, tzinfo=UTC)),
    ("newyear", datetime(2031, 12, 31, 23, tzinfo=UTC), datetime(2033, 1, 1, tzinfo=UTC)),
], ids=["hour", "hour-at-new-year", "midnight", "midnight-leap-day", "newyear",
        "newyear-late-in-december"])
def test_the_next_boundary(mode, now, boundary):
    # Values, not clock reads: the mode itself counts from the clock (below, in a pytest).
    assert next_boundary(mode, now) == boundary
    # In another zone, the same instant has the same next boundary (UTC's).
    assert next_boundary(mode, now.astimezone(timezone_ahead())) == boundary


def timezone_ahead():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Pacific/Auckland")


@pytest.mark.parametrize("newyear_now", [datetime(2031, 1, 2, tzinfo=UTC),
                                          datetime(2031, 12, 31, 23, tzinfo=UTC)])
def test_a_new_year_is_at_least_a_year_ahead(newyear_now):
    assert next_boundary("newyear", newyear_now) - newyear_now >= timedelta(days=365)


def test_each_test_keeps_its_offset():
    offsets = (-20, 1, 20)
    ids = [f"tests/test_x.py::test_{n}" for n in range(300)]
    picked = [clock_offset(nodeid, offsets) for nodeid in ids]
    assert picked == [clock_offset(nodeid, offsets) for nodeid in ids]
    assert set(picked) == set(offsets)  # every offset is used


@pytest.mark.parametrize(("at", "offset", "expected"), [
    ("", "", None),
    ("hour", "", ("hour", (-90, -20, -1, 1, 20, 90))),
    ("midnight", "-20, 1,20", ("midnight", (-20, 1, 20))),
    ("hour", "20,3620,-86399", ("hour", (20, 3620, -86399))),
])
def test_the_variables_are_read(monkeypatch, at, offset, expected):
    monkeypatch.setenv("GYRINX_TEST_CLOCK_AT", at)
    monkeypatch.setenv("GYRINX_TEST_CLOCK_OFFSET", offset)
    assert clock_at() == expected


@pytest.mark.parametrize(("at", "offset", "says"), [
    ("noon", "", "expected one of hour, midnight, newyear"),
    ("hour", "soon", "expected whole seconds"),
    ("hour", "86400", "under a day either way"),
    ("hour", "1,,2", "expected whole seconds"),
])
def test_a_bad_value_is_a_usage_error_with_a_sentence(monkeypatch, at, offset, says):
    monkeypatch.setenv("GYRINX_TEST_CLOCK_AT", at)
    monkeypatch.setenv("GYRINX_TEST_CLOCK_OFFSET", offset)
    with pytest.raises(pytest.UsageError, match=says):
        clock_at()


def probe(at: str, offset: int) -> tuple[datetime, dict[str, datetime]]:
    """tests/clock_probe.py run in a pytest of its own: the real clock before it started, and
    the clock each of its tests started at."""
    env = {**os.environ, "GYRINX_TEST_CLOCK_AT": at, "GYRINX_TEST_CLOCK_OFFSET": str(offset)}
    env.pop("GYRINX_TEST_DB", None)
    before = datetime.now(UTC)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/clock_probe.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"GYRINX_TEST_CLOCK_AT={at}" not in done.stderr
    found = {name: datetime.fromisoformat(when)
             for name, when in re.findall(r"CLOCK (\S+) (\S+)", done.stdout)}
    assert set(found) == {"moved", "not-moved"}, done.stdout
    return before, found


@pytest.mark.real_clock  # compares its clock with the probe's, another process's
def test_a_test_starts_before_the_next_full_hour_and_a_real_clock_test_does_not():
    before, found = probe("hour", -30)
    # 30 s before a full hour, give or take the probe's start (the hour counted from when the
    # test started, so the one after `before`, or the next if the hour turned meanwhile).
    boundary = found["moved"] + timedelta(seconds=30)
    assert boundary.minute == 0 and boundary.second < 10, found
    assert boundary > before and boundary - before < timedelta(hours=1, minutes=5)
    assert abs(found["not-moved"] - datetime.now(UTC)) < timedelta(minutes=2)


@pytest.mark.real_clock  # compares its clock with the probe's, another process's
def test_a_test_starts_after_a_new_year_at_least_a_year_ahead():
    before, found = probe("newyear", 20)
    start = found["moved"] - timedelta(seconds=20)
    assert (start.month, start.day, start.hour, start.minute) == (1, 1, 0, 0), found
    assert start.second < 10 and start - before >= timedelta(days=365), found
