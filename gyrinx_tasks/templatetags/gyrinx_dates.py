"""``{% load gyrinx_dates %}``: the admin's one date-time format (gyrinx_tasks/dates.py).

``{{ value|when }}`` → ``5 Dec 2026, 16:19 UTC``; ``{{ value|when:"seconds" }}`` adds seconds;
``"nozone"`` leaves the zone out (the first time of a range); both: ``"seconds,nozone"``.
"""

from typing import Any

from django import template

from ..dates import format_when

register = template.Library()


@register.filter
def when(value: Any, options: str = "") -> str:
    flags = {flag.strip() for flag in options.split(",")}
    return format_when(value, seconds="seconds" in flags, zone="nozone" not in flags)
