"""The one date-time format of the admin pages: ``5 Dec 2026, 16:19 UTC``.

With seconds (``16:19:07``) where order or duration matters: a run's page, its timeline, a
Run now being watched. The zone is the viewer's (Django's current time zone) unless another
is given, and it is printed once: a range prints it after the second time, and two times in
zones that agree print as one.
"""

from datetime import datetime, tzinfo
from typing import Any

from django.utils import dateformat, timezone

DATE_TIME = "j M Y, H:i"
DATE_TIME_SECONDS = "j M Y, H:i:s"
TIME = "H:i"
EMPTY = "–"


def as_datetime(value: Any) -> datetime | None:
    """A datetime from a datetime or an ISO 8601 string (timeline and error entries)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def local(value: datetime, zone: tzinfo | None = None) -> datetime:
    if timezone.is_naive(value):
        return value
    return timezone.localtime(value, zone)


def format_when(value: Any, *, seconds: bool = False, zone: bool = True,
                tz: tzinfo | None = None) -> str:
    """``value`` in the admin's format; text that is not a date-time is returned as it is."""
    when = as_datetime(value)
    if when is None:
        return str(value) if value not in (None, "") else EMPTY
    when = local(when, tz)
    text = dateformat.format(when, DATE_TIME_SECONDS if seconds else DATE_TIME)
    if zone and timezone.is_aware(when):
        text += " " + dateformat.format(when, "T")
    return text


def zones_agree(at: datetime, one: tzinfo, other: tzinfo) -> bool:
    """Whether ``at`` reads the same clock time in both zones (London in winter and UTC do)."""
    return at.astimezone(one).utcoffset() == at.astimezone(other).utcoffset()
