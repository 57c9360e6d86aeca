"""Schedule health: did each scheduled job fire when its cron and time zone said it would?

For every scheduled route, the fire times its schedule expected over the last
``HEALTH_WINDOW`` and the job's tolerance (at most ``MAX_FIRINGS`` of them; a job that fires
less often is judged on its latest fire time within ``NEVER_DUE_AFTER``) are set against the
runs recorded with the ``schedule`` trigger. Each fire time is judged, and the job takes the
worst judgement:

* **overdue now**: the latest fire time passed more than the tolerance ago and no run has
  arrived for it yet;
* **failed**: a run for one of the fire times failed (or was rejected);
* **missed**: an earlier fire time got no run before the next one came due;
* **late**: a run arrived more than the tolerance after its fire time;
* **on time**: every run arrived within the tolerance (a fire time still within its
  tolerance, with no run yet, is not held against the job);
* **not yet due**: the schedule has not come due within ``NEVER_DUE_AFTER`` (e.g. a job for 29
  February), so nothing can have been missed.

A run belongs to the fire time it follows: the first scheduled run recorded from a little
before one fire time (clocks differ slightly) until the next. "Arrived" is when the run was
first recorded, i.e. when Pub/Sub first delivered the firing (or the local loop fired it).

``schedule_health()`` is the one place this is worked out: the scheduled-jobs page, the
overview and ``health_report()`` (for the health endpoint of issue 19, which will call it)
all read it. It makes one database query for all jobs.
"""

import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone

from ..conf import tasks_settings
from ..models import SHOWN_STATUS, ShownStatus, TaskExecution, Trigger
from ..registry import get_routes
from ..routes import TaskRoute
from .cron import recent_fire_times, schedule_zone

HEALTH_WINDOW = timedelta(hours=24)
MAX_FIRINGS = 60  # per job: an every-minute job is judged on its last hour
MAX_RUNS_PER_JOB = MAX_FIRINGS * 4  # on average, read at most this many runs per job
NEVER_DUE_AFTER = timedelta(days=366)  # look no further back for a job's latest fire time
# A run recorded up to this long before its fire time still belongs to it (clock skew between
# Cloud Scheduler and the service); never more than half the gap to the fire time before.
EARLY = timedelta(seconds=30)
# A run failing an attempt that Pub/Sub will redeliver counts too: a job whose every firing
# keeps failing and retrying is not healthy. Its words say it will retry (describe()).
FAILED_STATES = (ShownStatus.FAILED, ShownStatus.WILL_RETRY, ShownStatus.REJECTED)


class Health(enum.StrEnum):
    """A job's state, worst first; the value is the words the admin shows."""

    OVERDUE = "overdue now"
    FAILED = "failed"
    MISSED = "missed"
    LATE = "late"
    ON_TIME = "on time"
    NOT_YET_DUE = "not yet due"

    @property
    def healthy(self) -> bool:
        return self in (Health.ON_TIME, Health.NOT_YET_DUE)

    @property
    def rank(self) -> int:
        return list(Health).index(self)


@dataclass(frozen=True)
class Firing:
    """One expected fire time and what became of it."""

    due_at: datetime
    health: Health | None  # None: no run yet, but still within the tolerance
    run_id: int | None = None
    run_status: str = ""
    arrived_at: datetime | None = None

    @property
    def delay(self) -> timedelta | None:
        return None if self.arrived_at is None else self.arrived_at - self.due_at


@dataclass(frozen=True)
class JobHealth:
    """A scheduled job's health: its state, the fire times judged (newest first), and why."""

    route: TaskRoute
    health: Health
    tolerance: timedelta
    firings: tuple[Firing, ...] = ()
    error: str = ""  # the schedule cannot be read (a system check says so too)
    checked_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        return self.health.healthy and not self.error

    @property
    def counts(self) -> dict[Health, int]:
        counts: dict[Health, int] = defaultdict(int)
        for firing in self.firings:
            if firing.health is not None:
                counts[firing.health] += 1
        return dict(counts)

    @property
    def worst(self) -> Firing | None:
        """The firing that decided the state (the newest of the worst), if any."""
        judged = [f for f in self.firings if f.health is self.health]
        return judged[0] if judged else None

    def describe(self) -> str:
        """One sentence saying why the job is in its state."""
        if self.error:
            return self.error
        if self.health is Health.NOT_YET_DUE:
            return (f"The schedule has not come due in the last {NEVER_DUE_AFTER.days} days, "
                    "so nothing has been missed.")
        firing, zone = self.worst, schedule_zone(self.route)
        minutes = _duration(self.tolerance)
        if firing is None:  # on time with only a fire time still inside its tolerance
            waiting = self.firings[0].due_at.astimezone(zone)
            return (f"Due at {waiting:%a %d %b %H:%M %Z}; a run may still arrive within "
                    f"{minutes}.")
        due = f"{firing.due_at.astimezone(zone):%a %d %b %H:%M %Z}"
        judged = sum(self.counts.values())
        if self.health is Health.OVERDUE:
            waited = _duration((self.checked_at or timezone.now()) - firing.due_at)
            return f"Due at {due}; no run has arrived {waited} later (tolerance {minutes})."
        if self.health is Health.FAILED and firing.run_status == ShownStatus.WILL_RETRY.label:
            return f"The run due at {due} is failing; Pub/Sub will retry it."
        if self.health is Health.FAILED:
            return f"The run due at {due} {firing.run_status.lower()}."
        if self.health is Health.MISSED:
            return (f"No run arrived for {due} before the next fire time; "
                    f"{self.counts[Health.MISSED]} of {judged} missed.")
        if self.health is Health.LATE:
            return (f"The run due at {due} arrived {_duration(firing.delay)} late "
                    f"(tolerance {minutes}).")
        if judged == 1:
            return f"The run due at {due} arrived within {minutes}."
        return f"{judged} of {judged} fire times ran within {minutes}."

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a health endpoint."""
        last = self.firings[0] if self.firings else None
        return {
            "task": self.route.name,
            "state": str(self.health),
            "healthy": self.healthy,
            "detail": self.describe(),
            "tolerance_seconds": int(self.tolerance.total_seconds()),
            "last_due_at": last.due_at.isoformat() if last else None,
            "counts": {str(health): count for health, count in self.counts.items()},
        }


def _duration(delta: timedelta | None) -> str:
    seconds = int((delta or timedelta()).total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def tolerance_for(route: TaskRoute) -> timedelta:
    """How late a scheduled run may arrive and still be on time: the route's own
    ``schedule_tolerance`` or the ``TASKS_SCHEDULE_TOLERANCE`` setting, in seconds."""
    own = route.schedule_tolerance
    seconds = own if own is not None else tasks_settings.TASKS_SCHEDULE_TOLERANCE
    return timedelta(seconds=seconds)


def expected_fire_times(route: TaskRoute, now: datetime,
                        tolerance: timedelta) -> list[datetime]:
    """The fire times to judge, newest first: those of the window, else the latest one.

    The window reaches back a tolerance further than HEALTH_WINDOW so that while a daily
    job's latest fire time may still get its run, the one a day before is still judged.
    """
    times = recent_fire_times(route, now, since=now - HEALTH_WINDOW - tolerance,
                              limit=MAX_FIRINGS)
    return times or recent_fire_times(route, now, since=now - NEVER_DUE_AFTER, limit=1)


def schedule_health(now: datetime | None = None,
                    routes: Iterable[TaskRoute] | None = None) -> list[JobHealth]:
    """The health of every scheduled route (of the registry unless ``routes`` is given).

    One query reads the scheduled runs of all the jobs' windows. May raise RegistryError when
    the registry cannot be loaded; a route whose schedule cannot be read gets an ``error``.
    """
    now = now or timezone.now()
    plans: list[tuple[TaskRoute, timedelta, list[datetime], str]] = []
    for route in get_routes() if routes is None else routes:
        if not route.is_scheduled:
            continue
        try:
            tolerance = tolerance_for(route)
            plans.append((route, tolerance, expected_fire_times(route, now, tolerance), ""))
        except ImproperlyConfigured as exc:
            plans.append((route, timedelta(), [], str(exc)))
    runs = _scheduled_runs(now, plans)
    return [_judge(route, tolerance, times, runs.get(route.name, []), now, error)
            for route, tolerance, times, error in plans]


def _scheduled_runs(now: datetime, plans: list) -> dict[str, list[tuple]]:
    """Each job's scheduled runs since its oldest fire time judged, oldest first."""
    windows = Q()
    for route, _tolerance, times, _error in plans:
        if times:
            windows |= Q(task_name=route.name, created_at__gte=times[-1] - EARLY)
    if not windows:
        return {}
    # Served by the (task_name, -created_at) index. Normally one row per fire time; the
    # cap keeps a flood of duplicate firings from making the page slow (newest rows kept).
    rows = (TaskExecution.objects.filter(windows, trigger=Trigger.SCHEDULE,
                                         created_at__lte=now)
            .order_by("-created_at", "-id")
            .annotate(shown=SHOWN_STATUS)
            .values_list("task_name", "pk", "created_at", "shown"))
    runs: dict[str, list[tuple]] = defaultdict(list)
    for name, *run in list(rows[:MAX_RUNS_PER_JOB * len(plans)])[::-1]:
        runs[name].append(tuple(run))
    return runs


def _judge(route: TaskRoute, tolerance: timedelta, times: list[datetime], runs: list[tuple],
           now: datetime, error: str) -> JobHealth:
    if error:
        return JobHealth(route, Health.ON_TIME, tolerance, error=error, checked_at=now)
    if not times:
        return JobHealth(route, Health.NOT_YET_DUE, tolerance, checked_at=now)
    oldest_first = times[::-1]
    # Each fire time owns the runs from a little before it until a little before the next.
    starts = [oldest_first[0] - EARLY] + [
        due - min(EARLY, (due - before) / 2)
        for before, due in zip(oldest_first, oldest_first[1:], strict=False)]
    firings = []
    for index, due in enumerate(oldest_first):
        end = starts[index + 1] if index + 1 < len(starts) else None
        run = next((r for r in runs if r[1] >= starts[index] and (end is None or r[1] < end)),
                   None)
        firings.append(_firing(due, run, tolerance, now, latest=end is None))
    firings.reverse()
    judged = [f.health for f in firings if f.health is not None]
    health = min(judged, key=lambda h: h.rank) if judged else Health.ON_TIME
    return JobHealth(route, health, tolerance, tuple(firings), checked_at=now)


def _firing(due: datetime, run: tuple | None, tolerance: timedelta, now: datetime,
            latest: bool) -> Firing:
    if run is None:
        if not latest:
            return Firing(due, Health.MISSED)
        return Firing(due, Health.OVERDUE if now - due > tolerance else None)
    pk, arrived, status = run
    if status in FAILED_STATES:
        health = Health.FAILED
    else:  # READY, RUNNING, SUCCESSFUL, or SKIPPED by a kill switch: it fired
        health = Health.LATE if arrived - due > tolerance else Health.ON_TIME
    return Firing(due, health, pk, str(ShownStatus(status).label), arrived)


def health_report(now: datetime | None = None) -> dict[str, Any]:
    """Every scheduled job's health, JSON-ready: what a health endpoint answers with.

    ``healthy`` is False when any job is late, missed, failed or overdue now.
    """
    jobs = schedule_health(now)
    return {"healthy": all(job.healthy for job in jobs),
            "unhealthy": sum(not job.healthy for job in jobs),
            "jobs": [job.as_dict() for job in jobs]}
