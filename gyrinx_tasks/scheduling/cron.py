"""When a scheduled route fires: its cron expression, its time zone, and its fire times.

Schedules are evaluated on the wall clock of ``route.schedule_timezone``. Around
daylight-saving changes the rules are those of Vixie cron, which unix-cron users expect:

* A schedule that names its hours (``30 1 * * *``) fires once per matching local time. When
  that time does not exist (clocks go forward) it fires at the first valid instant after,
  the moment the clocks change; when it happens twice (clocks go back) it fires the first
  time only.
* A schedule whose hour field is a wildcard (``0 * * * *``, ``*/15 * * * *``) follows real
  time: it fires in both passes of a repeated hour and skips the local times that do not
  exist, so an hourly schedule fires every real hour, never twice and never missing one.

The local loop (``firing.py``), the scheduled-jobs page and schedule health all step through
these same instants.
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from ..routes import TaskRoute

# Longer than any daylight-saving shift, so both passes of a repeated local time are seen.
LOOKBACK = timedelta(hours=3)


def cron_expression(route: TaskRoute) -> str:
    """The route's schedule as five cron fields, or ImproperlyConfigured naming the fix."""
    # Cloud Scheduler takes unix-cron only: five fields, no "@daily" and no seconds field.
    schedule = " ".join((route.schedule or "").split())
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise ImproperlyConfigured(
            f"The schedule {route.schedule!r} of task {route.name!r} is not a five-field cron "
            "expression. Write it as 'minute hour day-of-month month day-of-week', "
            "e.g. '0 3 * * *'."
        )
    return schedule


def schedule_zone(route: TaskRoute) -> ZoneInfo:
    try:
        return ZoneInfo(route.schedule_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"The schedule_timezone {route.schedule_timezone!r} of task {route.name!r} is not "
            "an IANA time zone. Use a name such as 'Europe/London' or 'UTC'."
        ) from exc


def validate_schedule(route: TaskRoute) -> None:
    """Raise ImproperlyConfigured, naming the fix, if the route's schedule cannot be used."""
    next_fire_time(route, timezone.now())  # checks the fields, the zone, and that it matches


def describe_schedule(route: TaskRoute) -> str:
    """A readable description of the route's schedule, e.g. "At 03:00 AM"."""
    from cron_descriptor import Options, get_description

    # Fixed locale and clock format, so the text does not depend on the machine's locale.
    options = Options(locale_code="en_US", use_24hour_time_format=False)
    return get_description(cron_expression(route), options)


def next_fire_time(route: TaskRoute, after: datetime) -> datetime:
    """The first instant strictly after ``after`` at which the route fires, in UTC."""
    if timezone.is_naive(after):
        raise ValueError("next_fire_time() needs an aware datetime, e.g. timezone.now().")
    expression, zone = cron_expression(route), schedule_zone(route)
    follows_real_time = expression.split()[1].startswith("*")
    after = after.astimezone(UTC)
    # croniter walks naive local wall-clock times; _instants() places each one in real time.
    walls = croniter(expression, after.astimezone(zone).replace(tzinfo=None) - LOOKBACK)
    best: datetime | None = None
    while True:
        try:
            wall = walls.get_next(datetime)
        except CroniterBadDateError as exc:
            raise ImproperlyConfigured(
                f"The schedule {route.schedule!r} of task {route.name!r} never matches a real "
                "date (e.g. 31 February). Correct its day-of-month and month fields."
            ) from exc
        if best is not None and wall > best.astimezone(zone).replace(tzinfo=None) + LOOKBACK:
            return best  # later wall times cannot map to an earlier instant
        for instant in _instants(wall, zone, follows_real_time):
            if instant > after and (best is None or instant < best):
                best = instant


def recent_fire_times(route: TaskRoute, until: datetime, *, since: datetime,
                      limit: int) -> list[datetime]:
    """The route's fire times in (since, until], newest first, at most ``limit``, in UTC.

    The same instants ``next_fire_time`` steps through (the same daylight-saving rules), found
    by walking the wall clock backwards, so the work grows with ``limit``, not with how often
    the route fires.
    """
    if timezone.is_naive(until) or timezone.is_naive(since):
        raise ValueError("recent_fire_times() needs aware datetimes, e.g. timezone.now().")
    expression, zone = cron_expression(route), schedule_zone(route)
    follows_real_time = expression.split()[1].startswith("*")
    until, since = until.astimezone(UTC), since.astimezone(UTC)
    walls = croniter(expression, until.astimezone(zone).replace(tzinfo=None) + LOOKBACK)
    found: set[datetime] = set()
    while limit > 0:
        try:
            wall = walls.get_prev(datetime)
        except CroniterBadDateError:
            break  # no earlier match within croniter's search: none in the window either
        # An instant lies within a daylight-saving shift of its wall time, so walls earlier
        # than this cannot give an instant newer than the oldest one still wanted.
        floor = since if len(found) < limit else max(since, sorted(found)[-limit])
        if wall < floor.astimezone(zone).replace(tzinfo=None) - LOOKBACK:
            break
        found.update(instant for instant in _instants(wall, zone, follows_real_time)
                     if since < instant <= until)
    return sorted(found, reverse=True)[:limit]


def _instants(wall: datetime, zone: ZoneInfo, follows_real_time: bool) -> list[datetime]:
    """The real instants at which a local wall-clock match fires (none, one or two)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != wall:  # skipped by clocks going forward
        return [] if follows_real_time else [_transition(second, first, zone)]
    if first != second:  # happens twice as clocks go back
        return [first, second] if follows_real_time else [first]
    return [first]


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant, to the second, at which the UTC offset changes between two instants."""
    old_offset = before.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == old_offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)
