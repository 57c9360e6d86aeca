"""Firing a scheduled route: the message it publishes, one firing now, and the local cron loop.

Cloud Scheduler fires scheduled routes in production. Locally, ``manage.py tasks_scheduler``
runs ``LocalScheduler``, which computes the same fire times (``cron.py``) and fires through the
route's own backend: Pub/Sub (the emulator) or, in synchronous mode, Django's ImmediateBackend.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections
from django.utils import timezone

from ..backend import PubSubBackend
from ..killswitch import kill_switch_state
from ..messages import (
    REQUESTED_BY_ATTRIBUTE,
    REQUESTED_BY_LIMIT,
    TRIGGER_ATTRIBUTE,
    build_message,
    trace_attributes,
)
from ..models import SwitchMode, TaskExecution, Trigger
from ..registry import get_routes
from ..routes import TaskRoute
from .cron import next_fire_time, schedule_zone, validate_schedule

logger = logging.getLogger("gyrinx_tasks")


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
