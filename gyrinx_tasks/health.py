"""Health, worked out in one place: stuck runs, failing tasks and missed schedules.

A run is **stuck** when it is one of three kinds (``StuckKind``), each judged against its
task's own limit:

* ``running``: RUNNING, and its last attempt started longer ago than the route's
  ``ack_deadline``. Pub/Sub has stopped waiting for that attempt's answer, so its worker died
  (or overran); a redelivery starts the run again, and if none comes the message is gone.
  "Give up and retry" (abandon.py) recovers it at once.
* ``unconfirmed``: READY with a publish that was never confirmed
  (``models.PUBLISH_UNCONFIRMED``), enqueued longer ago than the ack deadline. "Publish again"
  on the run's page recovers it (retry.republish_run).
* ``waiting``: READY (and not one of the above) for longer than the task's max READY age
  (``health_max_ready_age`` on the route or ``@task``, else ``TASKS_HEALTH_MAX_READY_AGE``).
  Runs of a task whose kill switch holds its deliveries are waiting on purpose and are not
  counted.

The kinds do not overlap. ``stuck_filter()`` is the one definition: the run list's "stuck"
filter, the overview's count and ``health_report()`` all
use it. Runs of tasks that are not in the registry are judged by the defaults.

``health_report()`` is what GET /tasks/health/ and ``manage.py tasks_health`` answer: a
reason for each task whose failure rate is over its limit, each task with stuck runs (by
kind), each scheduled job that is late, missed, failed or overdue
(schedule_health.health_report), and the registry if it cannot be loaded. No reasons:
healthy, which is also what a new site with no runs is (a scheduled job that has never fired
is left out). It makes two queries, each bounded by an index (the window's runs by
``created_at``, the READY and RUNNING runs by ``status``), a third for the scheduled jobs'
runs when there are scheduled jobs, and a fourth, one index probe per job, only when a job
has no run in its window. health_alerts.check_health() adds one read of the last health.
"""

import enum
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Case, Count, Exists, Min, OuterRef, Q, Value, When
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .conf import DEFAULT_HEALTH_MAX_READY_AGE, tasks_settings
from .exceptions import RegistryError
from .models import (
    FAILED_FOR_GOOD,
    PUBLISH_UNCONFIRMED,
    KillSwitch,
    State,
    SwitchMode,
    TaskExecution,
    Trigger,
)
from .registry import get_routes
from .routes import TaskRoute
from .scheduling.health import JobHealth, schedule_health

# What an unregistered task's runs are judged by (TaskRoute's own default).
DEFAULT_ACK_DEADLINE = 300  # TaskRoute's default ack_deadline (tests/test_stuck_runs.py)


class StuckKind(enum.StrEnum):
    """How a run is stuck; the value is the run list filter's parameter."""

    RUNNING = "running"
    UNCONFIRMED = "unconfirmed"
    WAITING = "waiting"

    @property
    def label(self) -> str:
        return str(STUCK_LABELS[self])

    @property
    def recovery(self) -> str:
        return str(STUCK_RECOVERY[self])


STUCK_LABELS = {
    StuckKind.RUNNING: _("running past the ack deadline"),
    StuckKind.UNCONFIRMED: _("publish not confirmed"),
    StuckKind.WAITING: _("ready too long"),
}
STUCK_RECOVERY = {
    StuckKind.RUNNING: _(
        "Its worker died or overran: Pub/Sub redelivers the message and the run starts "
        "again. To recover now (or if it stays here: the message is gone, retention ended or "
        "dead-lettered), use Give up and retry on the run's page, or the action on a "
        "selection: the run is settled as failed and a new run is enqueued. A worker still "
        "alive may finish too, so the task can run twice."),
    StuckKind.UNCONFIRMED: _(
        "Pub/Sub may never have received the message: open the run and use Publish again "
        "(it runs once even if the first message arrives too)."),
    StuckKind.WAITING: _(
        "No delivery has started it: check the task's subscription and kill switch "
        "(Provisioning status, Kill switches); once the ack deadline has passed, Publish "
        "again on the run's page sends it once more."),
}


# --- Thresholds ---------------------------------------------------------------------------

def option_problem(name: str, value: object) -> str:
    """What is wrong with a route's or @task's health threshold ("is not ..."), or "" (None
    is unset). System checks E044 and E045 report it; until it is fixed the setting is used."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        number = None
    else:
        number = value
    if name == "health_failure_rate":
        return "" if number is not None and 0 <= number <= 1 else "is not a share from 0 to 1."
    if not isinstance(number, int) or number < 1:
        return "is not a whole number of seconds of at least 1."
    return ""


def _option(route: TaskRoute | None, name: str) -> Any:
    """The route's own valid value, else @task(...)'s (task_class.PubSubTask), else None."""
    if route is None:
        return None
    for value in (getattr(route, name, None), getattr(route.func, name, None)):
        if value is not None and not option_problem(name, value):
            return value
    return None


def failure_rate_for(route: TaskRoute | None) -> float:
    """The share of finished runs that may fail before the task is unhealthy."""
    own = _option(route, "health_failure_rate")
    return float(own) if own is not None else tasks_settings.TASKS_HEALTH_FAILURE_RATE


def max_ready_age_for(route: TaskRoute | None) -> int:
    """Seconds a run of the route may wait READY before it is stuck."""
    own = _option(route, "health_max_ready_age")
    if own is not None:
        return int(own)
    try:
        return tasks_settings.TASKS_HEALTH_MAX_READY_AGE
    except ImproperlyConfigured:  # E043 says so, and health_report() answers unhealthy
        return DEFAULT_HEALTH_MAX_READY_AGE


def ack_deadline_for(route: TaskRoute | None) -> int:
    """The route's ack deadline in seconds (TaskRoute's default for a task not in the
    registry, or while E006 reports a value that is no number)."""
    value = getattr(route, "ack_deadline", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return DEFAULT_ACK_DEADLINE
    return int(value)


def _routes() -> tuple[TaskRoute, ...]:
    try:
        return get_routes()
    except RegistryError:
        return ()  # everything is judged by the defaults; health_report() says why


def ready_too_long(task_name: str, oldest_ready: datetime | None, now: datetime) -> bool:
    """Whether a READY run of the task created at ``oldest_ready`` has waited longer than the
    task's max READY age (the overview marks its oldest READY run so)."""
    if oldest_ready is None:
        return False
    route = next((route for route in _routes() if route.name == task_name), None)
    return now - oldest_ready > timedelta(seconds=max_ready_age_for(route))


# --- Stuck runs ---------------------------------------------------------------------------

def _older(age: Callable[[datetime], Q], limits: dict[str, int], default: int,
           now: datetime) -> Q:
    """Runs older than their task's limit in seconds (``default`` for unlisted tasks): one
    condition per distinct limit, so the SQL does not grow with the number of tasks."""
    by_limit: dict[int, list[str]] = defaultdict(list)
    for name, seconds in limits.items():
        by_limit[seconds].append(name)
    found = Q()
    for seconds, names in sorted(by_limit.items()):
        found |= Q(task_name__in=sorted(names)) & age(now - timedelta(seconds=seconds))
    others = age(now - timedelta(seconds=default))
    if limits:
        others &= ~Q(task_name__in=sorted(limits))
    return found | others


def _attempted_before(cutoff: datetime) -> Q:
    return (Q(last_attempted_at__lt=cutoff)
            | Q(last_attempted_at__isnull=True, created_at__lt=cutoff))


def _created_before(cutoff: datetime) -> Q:
    return Q(created_at__lt=cutoff)


def stuck_conditions(now: datetime | None = None) -> dict[StuckKind, Q]:
    """Each kind's condition on TaskExecution, with the registry's limits as of now."""
    now = now or timezone.now()
    routes = _routes()
    ack = {route.name: ack_deadline_for(route) for route in routes}
    ready_age = {route.name: max_ready_age_for(route) for route in routes}
    default_age = max_ready_age_for(None)
    unconfirmed = (Q(status=State.READY, status_detail=PUBLISH_UNCONFIRMED)
                   & _older(_created_before, ack, DEFAULT_ACK_DEADLINE, now))
    held = Exists(KillSwitch.objects.filter(task_name=OuterRef("task_name"), enabled=False,
                                            mode=SwitchMode.HOLD))
    return {
        StuckKind.RUNNING: Q(status=State.RUNNING)
        & _older(_attempted_before, ack, DEFAULT_ACK_DEADLINE, now),
        StuckKind.UNCONFIRMED: unconfirmed,
        StuckKind.WAITING: Q(status=State.READY)
        & _older(_created_before, ready_age, default_age, now) & ~unconfirmed & ~Q(held),
    }


def stuck_filter(kind: str | None = None, now: datetime | None = None) -> Q:
    """The condition for stuck runs of ``kind`` (a StuckKind value), or of any kind.

    Raises ValueError for a kind that is not one."""
    conditions = stuck_conditions(now)
    if kind:
        return conditions[StuckKind(kind)]
    return conditions[StuckKind.RUNNING] | conditions[StuckKind.UNCONFIRMED] | conditions[
        StuckKind.WAITING]


@dataclass(frozen=True)
class StuckGroup:
    """The stuck runs of one task and kind."""

    task: str
    kind: StuckKind
    count: int
    oldest: datetime  # created_at of the oldest


@dataclass(frozen=True)
class Stuck:
    """Every task's stuck runs, by kind."""

    groups: tuple[StuckGroup, ...] = ()

    @property
    def total(self) -> int:
        return sum(group.count for group in self.groups)

    def count(self, kind: StuckKind) -> int:
        return sum(group.count for group in self.groups if group.kind is kind)

    def by_kind(self) -> dict[str, int]:
        return {str(kind): self.count(kind) for kind in StuckKind}


def stuck_runs(now: datetime | None = None) -> Stuck:
    """The stuck runs counted per task and kind, in one query over the READY and RUNNING
    runs (the status index)."""
    conditions = stuck_conditions(now)
    kind = Case(*(When(condition, then=Value(str(kind)))
                  for kind, condition in conditions.items()))
    any_kind = Q()
    for condition in conditions.values():
        any_kind |= condition
    rows = (TaskExecution.objects.filter(status__in=(State.READY, State.RUNNING))
            .filter(any_kind).order_by().annotate(kind=kind)
            .values("task_name", "kind").annotate(n=Count("pk"), oldest=Min("created_at")))
    groups = [StuckGroup(row["task_name"], StuckKind(row["kind"]), row["n"], row["oldest"])
              for row in rows]
    return Stuck(tuple(sorted(groups, key=lambda g: (g.task, list(StuckKind).index(g.kind)))))


# --- Failure rates ------------------------------------------------------------------------

# A failure that stays one: FAILED for good (models.FAILED_FOR_GOOD, the dashboard's "Failed")
# and REJECTED runs. A FAILED attempt that Pub/Sub redelivers ("Failing, will retry") is not
# counted yet.
FINAL_FAILURE = Q(status=State.REJECTED) | FAILED_FOR_GOOD
FINISHED = (State.SUCCESSFUL, State.FAILED, State.REJECTED)


@dataclass(frozen=True)
class FailureRate:
    task: str
    failed: int
    succeeded: int

    @property
    def finished(self) -> int:
        return self.failed + self.succeeded

    @property
    def rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


def failure_rates(since: datetime, until: datetime) -> list[FailureRate]:
    """Per task, final failures and successes among the runs created in [since, until]."""
    rows = (TaskExecution.objects.filter(created_at__gte=since, created_at__lte=until,
                                         status__in=FINISHED)
            .order_by().values("task_name")
            .annotate(failed=Count("pk", filter=FINAL_FAILURE),
                      succeeded=Count("pk", filter=Q(status=State.SUCCESSFUL))))
    return [FailureRate(row["task_name"], row["failed"], row["succeeded"]) for row in rows]


# --- The report ---------------------------------------------------------------------------

class ReasonKind(enum.StrEnum):
    FAILURE_RATE = "failure_rate"
    STUCK_RUNNING = "stuck_running"
    PUBLISH_UNCONFIRMED = "publish_unconfirmed"
    READY_TOO_LONG = "ready_too_long"
    SCHEDULE = "schedule"
    REGISTRY = "registry"
    DATABASE = "database"  # the endpoint could not read it
    CONFIGURATION = "configuration"  # a health setting is invalid (system checks E040-E043)


REASON_FOR_STUCK = {StuckKind.RUNNING: ReasonKind.STUCK_RUNNING,
                    StuckKind.UNCONFIRMED: ReasonKind.PUBLISH_UNCONFIRMED,
                    StuckKind.WAITING: ReasonKind.READY_TOO_LONG}


@dataclass(frozen=True)
class Reason:
    """Why the site is unhealthy: a kind, the task it names ("" for none), a sentence, and
    numbers for machines. Never anything of a run's arguments or results."""

    kind: ReasonKind
    task: str
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What identifies the reason across checks (its numbers change; this does not)."""
        return f"{self.kind}:{self.task}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "task": self.task, "detail": self.detail,
                **self.facts}


@dataclass(frozen=True)
class HealthReport:
    checked_at: datetime
    reasons: tuple[Reason, ...]
    stuck: Stuck
    window_seconds: int

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def keys(self) -> list[str]:
        return sorted({reason.key for reason in self.reasons})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what GET /tasks/health/ answers."""
        return {
            "healthy": self.healthy,
            "checked_at": self.checked_at.isoformat(),
            "reasons": [reason.as_dict() for reason in self.reasons],
            "stuck": {"total": self.stuck.total, **self.stuck.by_kind()},
            "failure_window_seconds": self.window_seconds,
        }


def _seconds(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def health_report(now: datetime | None = None) -> HealthReport:
    """The site's health now (see the module docstring); raises DatabaseError if the
    database cannot be read."""
    now = now or timezone.now()
    # Read every threshold setting first, so an invalid one (E040-E043) is reported however
    # many runs there are.
    _ = tasks_settings.TASKS_HEALTH_FAILURE_RATE, tasks_settings.TASKS_HEALTH_MAX_READY_AGE
    reasons: list[Reason] = []
    try:
        routes = {route.name: route for route in get_routes()}
    except RegistryError as exc:
        routes = {}
        reasons.append(Reason(ReasonKind.REGISTRY, "", str(exc)))
    window = tasks_settings.TASKS_HEALTH_WINDOW
    minimum = tasks_settings.TASKS_HEALTH_MIN_RUNS
    for rate in failure_rates(now - timedelta(seconds=window), now):
        limit = failure_rate_for(routes.get(rate.task))
        if rate.finished >= minimum and rate.rate > limit:
            reasons.append(Reason(
                ReasonKind.FAILURE_RATE, rate.task,
                f"{rate.failed} of {rate.finished} runs that finished in the last "
                f"{_seconds(timedelta(seconds=window))} failed ({rate.rate:.0%}; the limit is "
                f"{limit:.0%}).",
                {"failed": rate.failed, "finished": rate.finished,
                 "failure_rate": round(rate.rate, 4), "limit": limit}))
    stuck = stuck_runs(now)
    for group in stuck.groups:
        route = routes.get(group.task)
        limit_seconds = (max_ready_age_for(route) if group.kind is StuckKind.WAITING
                         else ack_deadline_for(route))
        reasons.append(Reason(
            REASON_FOR_STUCK[group.kind], group.task,
            f"{group.count} run{'s' if group.count != 1 else ''} {group.kind.label}; the "
            f"oldest was created {_seconds(now - group.oldest)} ago (limit "
            f"{_seconds(timedelta(seconds=limit_seconds))}).",
            {"count": group.count, "oldest_age_seconds": int((now - group.oldest)
                                                              .total_seconds()),
             "limit_seconds": limit_seconds}))
    if routes:
        reasons += [Reason(ReasonKind.SCHEDULE, job.route.name, job.describe(),
                           {"state": "schedule unreadable" if job.error else str(job.health)})
                    for job in _unhealthy_jobs(now)]
    return HealthReport(now, tuple(reasons), stuck, window)


def _unhealthy_jobs(now: datetime) -> list[JobHealth]:
    """Scheduled jobs that are late, missed, failed or overdue (schedule_health), leaving
    out jobs that have never fired at all: their schedule page says "overdue now", but a new
    site, or a job added a moment ago, has no history to have missed."""
    unhealthy = [job for job in schedule_health(now) if not job.healthy]
    unfired = [job.route.name for job in unhealthy
               if not job.error and not any(firing.run_id for firing in job.firings)]
    fired = _fired_ever(unfired)
    return [job for job in unhealthy if job.route.name not in unfired or job.route.name in fired]


def _fired_ever(names: list[str]) -> set[str]:
    """Which of the jobs have a scheduled run recorded, ever: one query of one EXISTS per job
    (each an index probe on task_name), asked only for jobs with no run in their window."""
    if not names:
        return set()
    found = {f"fired_{index}": Exists(TaskExecution.objects.filter(
        task_name=name, trigger=Trigger.SCHEDULE)) for index, name in enumerate(names)}
    # Any one row carries the answers; an empty table has none, and nothing has fired.
    row = TaskExecution.objects.order_by().annotate(**found).values(*found).first()
    return {name for index, name in enumerate(names) if row and row[f"fired_{index}"]}
