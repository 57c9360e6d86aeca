"""Scheduled routes: the message they publish, when they fire, and the local cron loop.

Cloud Scheduler fires scheduled routes in production. Locally, ``manage.py tasks_scheduler``
runs ``LocalScheduler``, which computes the same fire times and fires through the route's
own backend: Pub/Sub (the emulator) or, in synchronous mode, Django's ImmediateBackend.

Schedules are evaluated on the wall clock of ``route.schedule_timezone``. Around
daylight-saving changes the rules are those of Vixie cron, which unix-cron users expect:

* A schedule that names its hours (``30 1 * * *``) fires once per matching local time. When
  that time does not exist (clocks go forward) it fires at the first valid instant after,
  the moment the clocks change; when it happens twice (clocks go back) it fires the first
  time only.
* A schedule whose hour field is a wildcard (``0 * * * *``, ``*/15 * * * *``) follows real
  time: it fires in both passes of a repeated hour and skips the local times that do not
  exist, so an hourly schedule fires every real hour, never twice and never missing one.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from .backend import PubSubBackend
from .killswitch import kill_switch_state
from .messages import (
    REQUESTED_BY_ATTRIBUTE,
    REQUESTED_BY_LIMIT,
    TRIGGER_ATTRIBUTE,
    build_message,
    trace_attributes,
)
from .models import SwitchMode, TaskExecution, Trigger
from .registry import get_routes
from .routes import TaskRoute

logger = logging.getLogger("gyrinx_tasks")

# Longer than any daylight-saving shift, so both passes of a repeated local time are seen.
LOOKBACK = timedelta(hours=3)


def scheduled_message(route: TaskRoute) -> dict[str, Any]:
    """The message a scheduled run carries; Cloud Scheduler jobs publish exactly this."""
    return build_message(route.scheduled_task_id, route.name, [], {})


def fire_scheduled(route: TaskRoute, trigger: str = Trigger.SCHEDULE,
                   requested_by: str = "") -> str:
    """Fire one scheduled run now; return the Pub/Sub message id, or the run's result id.

    ``requested_by`` (who pressed Run now) travels as a message attribute; the push endpoint
    writes it into the run's first timeline note.
    """
    backend = route.task.get_backend()
    if isinstance(backend, PubSubBackend):
        # The push endpoint records the run when it is delivered, keyed by message id. A
        # held switch holds the firing in Pub/Sub like any message; it runs when switched on.
        attributes = {TRIGGER_ATTRIBUTE: str(trigger), **trace_attributes()}
        if requested_by:
            attributes[REQUESTED_BY_ATTRIBUTE] = requested_by[:REQUESTED_BY_LIMIT]
        return backend.publish(route.topic_name, scheduled_message(route), **attributes)
    mode, reason = kill_switch_state(route)
    if mode == SwitchMode.HOLD:
        # Without Pub/Sub there is no queue to hold the firing in; the next one runs once
        # the switch is on, as with a skip.
        reason = (f"Kill switch for {route.name} is off in the database (hold), but the "
                  f"{backend.alias!r} backend has no queue to hold a firing in, so it is "
                  "skipped.")
    if reason:  # the push endpoint would skip it too
        execution = TaskExecution(
            task_id=route.scheduled_task_id,
            task_name=route.name,
            task_path=route.path,
            backend=backend.alias,
            trigger=trigger,
            enqueued_at=timezone.now(),
        )
        execution.skip(reason)
        execution.save()
        logger.warning("Skipped %s (%s): %s", route.name, execution.result_id, reason)
        return execution.result_id
    result = route.task.enqueue()
    # The task signals recorded the run; mark it as this schedule's.
    TaskExecution.objects.filter(result_id=result.id).update(
        trigger=trigger, task_id=route.scheduled_task_id
    )
    return result.id


def fire_from_loop(route: TaskRoute) -> str:
    """fire_scheduled for a long-lived process: first drop connections the database closed."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # never inside a transaction (or a test's)
            connection.close_if_unusable_or_obsolete()
    return fire_scheduled(route)


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


def due_routes(
    now: datetime,
    last_checked: datetime,
    routes: Iterable[TaskRoute] | None = None,
    upcoming: dict[str, tuple[datetime, datetime]] | None = None,
) -> list[tuple[TaskRoute, datetime]]:
    """Scheduled routes due in (last_checked, now], each once, with its latest due time.

    Several due times in one window (the machine slept) fire once, as Cloud Scheduler never
    runs two executions of a job at once. ``upcoming`` is a cache a loop passes back in: it
    maps a route name to (checked up to, next fire time) so each tick need not recompute.
    """
    due = []
    for route in get_routes() if routes is None else routes:
        if not route.is_scheduled:
            continue
        cached = (upcoming or {}).get(route.name)
        at = cached[1] if cached and cached[0] == last_checked else None
        at = at or next_fire_time(route, last_checked)
        following = at
        if at <= now:
            while (following := next_fire_time(route, following)) <= now:
                at = following
            due.append((route, at))
        if upcoming is not None:
            upcoming[route.name] = (now, following)
    return due


@dataclass(frozen=True)
class Fired:
    """One fire of the local loop: what, for when, and the message id or the error."""

    route: TaskRoute
    due_at: datetime
    ident: str = ""
    error: Exception | None = None

    def describe(self) -> str:
        local = self.due_at.astimezone(schedule_zone(self.route))
        when = f"{local:%Y-%m-%d %H:%M %Z} ({self.route.schedule_timezone})"
        if self.error is not None:
            return f"{when}  {self.route.name}  FAILED: {type(self.error).__name__}: {self.error}"
        return f"{when}  {self.route.name}  fired: {self.ident}"


class LocalScheduler:
    """The local cron loop. Time comes from ``clock`` and ``sleep`` so tests can supply it."""

    def __init__(
        self,
        routes: Iterable[TaskRoute] | None = None,
        *,
        interval: float = 15,
        clock: Callable[[], datetime] = timezone.now,
        sleep: Callable[[float], Any] = time.sleep,
        fire: Callable[[TaskRoute], str] | None = None,
        report: Callable[[Fired], Any] | None = None,
    ) -> None:
        self.routes = [r for r in (get_routes() if routes is None else routes) if r.is_scheduled]
        for route in self.routes:  # a bad schedule stops the loop at start-up, not at 3 a.m.
            validate_schedule(route)
        self.interval, self.clock, self.sleep = interval, clock, sleep
        self.fire = fire or fire_from_loop
        self.report = report or (lambda fired: logger.info("%s", fired.describe()))
        self._upcoming: dict[str, tuple[datetime, datetime]] = {}

    def tick(self, last_checked: datetime, now: datetime) -> list[Fired]:
        """Fire every route due in (last_checked, now]; one failure does not stop the rest."""
        fired: list[Fired] = []
        for route, at in due_routes(now, last_checked, self.routes, self._upcoming):
            try:
                record = Fired(route, at, ident=self.fire(route))
            except Exception as exc:
                logger.exception("Firing scheduled task %s failed", route.name)
                record = Fired(route, at, error=exc)
            self.report(record)
            fired.append(record)
        return fired

    def run(self, max_iterations: int | None = None) -> int:
        """Check every ``interval`` seconds; return how many fires were made."""
        last = self.clock()  # start from now: a backlog missed while stopped is not fired
        count = iterations = 0
        while max_iterations is None or iterations < max_iterations:
            self.sleep(self.interval)
            now = self.clock()
            if now > last:  # a clock set back waits to catch up rather than fire twice
                count += len(self.tick(last, now))
                last = now
            iterations += 1
        return count
