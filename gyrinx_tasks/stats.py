"""Overview aggregates per task over a time window: counts, failure rate, latency, throughput.

Every query is bounded by ``created_at >= since`` (the ``gyrinx_exec_created`` index) or by
``status IN (READY, RUNNING)`` (the status indexes), so the cost follows the number of runs
in the window, not the size of the table. ``overview()`` makes at most five queries whatever
the number of tasks (the fifth, over the window's FAILED runs only, tells the failing ones that
will retry from the final failures).

The 30- and 90-day windows read the hourly rollups instead (gyrinx_tasks/rollups.py), which
survive pruning: their cost follows the number of tasks and hours, and their percentiles
come from fixed-bucket histograms (within one bucket of the exact ones).

Percentiles are PostgreSQL's ``percentile_cont`` (continuous, interpolated). Other databases
get the same numbers from ``percentile_cont()`` below over the window's exact durations.
"""

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import Count, F, FloatField, Func, Min, Q, QuerySet
from django.db.models.aggregates import Aggregate
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .exceptions import RegistryError
from .expressions import BucketIndex, last_error_class
from .models import WILL_RETRY, ShownStatus, State, TaskExecution
from .registry import get_routes

# Finished runs whose duration means something: they started and ran to an outcome.
TIMED_STATES = (State.SUCCESSFUL, State.FAILED)
ACTIVE_STATES = (State.READY, State.RUNNING)
# The overview's panel of the newest failures.
RECENT_FAILURES_LIMIT = 10
RUNNING_LIST_LIMIT = 20


@dataclass(frozen=True)
class Window:
    key: str
    label: Any
    length: timedelta
    bucket: timedelta  # one bar of the runs-per-minute chart
    from_rollups: bool = False  # read from the hourly rollups, not the runs

    @property
    def buckets(self) -> int:
        return int(self.length / self.bucket)

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """[since, until): ``until`` is ``now`` rounded up to a whole bucket.

        Aligned bars stay put between refreshes (the newest one fills up as runs arrive)
        and ``since`` falls on a whole second, which keeps the bucket arithmetic exact.
        """
        size = int(self.bucket.total_seconds())
        epoch = math.floor(now.timestamp() / size) * size + size
        until = datetime.fromtimestamp(epoch, tz=now.tzinfo or timezone.get_current_timezone())
        return until - self.length, until


WINDOWS = {
    window.key: window
    for window in (
        Window("1h", _("Last hour"), timedelta(hours=1), timedelta(minutes=1)),
        Window("24h", _("Last 24 hours"), timedelta(hours=24), timedelta(minutes=15)),
        Window("7d", _("Last 7 days"), timedelta(days=7), timedelta(hours=2)),
        Window("30d", _("30 days"), timedelta(days=30), timedelta(hours=6), from_rollups=True),
        Window("90d", _("90 days"), timedelta(days=90), timedelta(days=1), from_rollups=True),
    )
}
DEFAULT_WINDOW = "24h"


class UnknownWindow(ValueError):
    """A window key that is not one of WINDOWS."""


def get_window(key: str | None) -> Window:
    if not key:
        return WINDOWS[DEFAULT_WINDOW]
    try:
        return WINDOWS[key]
    except KeyError:
        choices = ", ".join(WINDOWS)
        raise UnknownWindow(
            f"There is no time window called {key!r}; choose one of {choices}."
        ) from None


@dataclass
class TaskStats:
    name: str
    # ShownStatus -> runs in the window: FAILED is final, WILL_RETRY failing (will retry).
    counts: dict[str, int] = field(default_factory=dict)
    p50: float | None = None  # seconds, first start to finish
    p95: float | None = None
    queue_p50: float | None = None  # seconds in queue: created to first start
    queue_p95: float | None = None
    per_minute: list[float] = field(default_factory=list)  # one value per chart bar
    failed_per_minute: list[float] = field(default_factory=list)  # the final FAILED part
    ready_now: int = 0  # READY and RUNNING are counted over all time, not the window:
    running_now: int = 0  # a run stuck for a week is exactly what this page must show
    oldest_ready: datetime | None = None
    registered: bool = True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def failure_rate(self) -> float | None:
        """FAILED / (SUCCESSFUL + FAILED) in the window; None before anything finished.

        FAILED is final (gave up, or not retried). A run failing with a retry to come has not
        finished and counts in neither: if its retry succeeds it is SUCCESSFUL, so a rate
        that counted it as failed would overstate what failed.
        """
        finished = self.count(State.SUCCESSFUL) + self.count(State.FAILED)
        return self.count(State.FAILED) / finished if finished else None


@dataclass
class Overview:
    window: Window
    since: datetime
    until: datetime
    tasks: list[TaskStats]
    running: list[TaskExecution]  # newest first, at most RUNNING_LIST_LIMIT

    @property
    def active(self) -> bool:
        """Whether anything is queued or running, i.e. whether the page should keep polling."""
        return any(task.ready_now or task.running_now for task in self.tasks)


# --- SQL building blocks -----------------------------------------------------------------

class Seconds(Func):
    """Seconds from the second datetime to the first, as a float (PostgreSQL only)."""

    arity = 2
    # float8 rather than EXTRACT's numeric: percentile_cont sorts these, and a fixed-size float
    # compares in one machine instruction where numeric compares digit by digit (same values:
    # durations are whole microseconds, which float8 holds exactly).
    template = "EXTRACT(EPOCH FROM (%(expressions)s))::double precision"
    arg_joiner = " - "
    output_field = FloatField()


class PercentileCont(Aggregate):
    """PostgreSQL's continuous percentile: ``percentile_cont(f) WITHIN GROUP (ORDER BY x)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)%(filter)s"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        fraction = float(fraction)  # inlined into the SQL, so never anything but a number
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("A percentile fraction lies between 0 and 1.")
        super().__init__(expression, fraction=repr(fraction), **extra)


# --- Percentiles without percentile_cont --------------------------------------------------

def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont over already sorted values (same interpolation)."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    first = ordered[low]
    if high == low:
        return first
    return first + (ordered[high] - first) * (position - low)


def _rounded(value: float | None) -> float | None:
    # Microseconds are the resolution of the stored times; rounding there makes both
    # databases' float arithmetic print the same number.
    return None if value is None else round(value, 6)


def _timed(runs: QuerySet) -> QuerySet:
    return runs.filter(status__in=TIMED_STATES, started_at__isnull=False,
                       finished_at__isnull=False)


def duration_percentiles(runs: QuerySet, fractions: Iterable[float] = (0.5, 0.95)
                         ) -> dict[str, list[float | None]]:
    """Per task name, the duration percentiles (seconds) of the timed runs in ``runs``."""
    fractions = tuple(fractions)
    timed = _timed(runs)
    if connections[runs.db].vendor == "postgresql":  # the database the query goes to
        seconds = Seconds(F("finished_at"), F("started_at"))
        aggregates = {f"p{i}": PercentileCont(seconds, fraction)
                      for i, fraction in enumerate(fractions)}
        rows = timed.order_by().values("task_name").annotate(**aggregates)
        return {row["task_name"]: [_rounded(row[f"p{i}"]) for i in range(len(fractions))]
                for row in rows}
    durations: dict[str, list[float]] = defaultdict(list)
    pairs = timed.order_by().values_list("task_name", "started_at", "finished_at")
    for name, started, finished in pairs.iterator(chunk_size=5000):
        durations[name].append((finished - started).total_seconds())
    result: dict[str, list[float | None]] = {}
    for name, values in durations.items():
        values.sort()
        result[name] = [_rounded(percentile_cont(values, fraction)) for fraction in fractions]
    return result


def timing_percentiles(runs: QuerySet, fractions: Iterable[float] = (0.5, 0.95)
                       ) -> dict[str, dict[str, list[float | None]]]:
    """Per task name, in one query: ``"run"``, the duration percentiles of the timed runs
    (as duration_percentiles), and ``"queue"``, those of the time in queue (created to first
    start) of every run that started.

    Time in queue starts at created_at, which is the enqueue for runs enqueued here (and the
    first delivery for scheduled firings and other producers' messages), so the query reads
    only the overview's index.
    """
    fractions = tuple(fractions)
    started = runs.filter(started_at__isnull=False)
    timed = Q(status__in=TIMED_STATES, finished_at__isnull=False)
    if connections[runs.db].vendor == "postgresql":
        ran = Seconds(F("finished_at"), F("started_at"))
        waited = Seconds(F("started_at"), F("created_at"))
        aggregates = {}
        for i, fraction in enumerate(fractions):
            aggregates[f"r{i}"] = PercentileCont(ran, fraction, filter=timed)
            aggregates[f"q{i}"] = PercentileCont(waited, fraction)
        rows = started.order_by().values("task_name").annotate(**aggregates)
        return {row["task_name"]: {
            "run": [_rounded(row[f"r{i}"]) for i in range(len(fractions))],
            "queue": [_rounded(row[f"q{i}"]) for i in range(len(fractions))],
        } for row in rows}
    durations: dict[str, list[float]] = defaultdict(list)
    waits: dict[str, list[float]] = defaultdict(list)
    rows = started.order_by().values_list("task_name", "status", "created_at", "started_at",
                                          "finished_at")
    for name, status, created, began, finished in rows.iterator(chunk_size=5000):
        waits[name].append((began - created).total_seconds())
        if status in TIMED_STATES and finished is not None:
            durations[name].append((finished - began).total_seconds())
    result: dict[str, dict[str, list[float | None]]] = {}
    for name, values in waits.items():
        values.sort()
        ran_values = sorted(durations.get(name, ()))
        result[name] = {
            "run": [_rounded(percentile_cont(ran_values, f)) for f in fractions],
            "queue": [_rounded(percentile_cont(values, f)) for f in fractions],
        }
    return result


# --- The overview -------------------------------------------------------------------------

def _registered_names() -> list[str]:
    try:
        return [route.name for route in get_routes()]
    except RegistryError:
        return []  # the registry's system check says why; the page still shows the runs


def overview(window: Window | str | None = None, now: datetime | None = None) -> Overview:
    """Everything the overview page shows, in at most five queries (three when nothing runs
    or failed)."""
    if not isinstance(window, Window):
        window = get_window(window)
    since, until = window.bounds(now or timezone.now())
    in_window = TaskExecution.objects.filter(created_at__gte=since, created_at__lt=until)

    tasks: dict[str, TaskStats] = {name: TaskStats(name) for name in _registered_names()}

    def task(name: str) -> TaskStats:
        if name not in tasks:
            tasks[name] = TaskStats(name, registered=False)
        return tasks[name]

    def empty_bars() -> list[float]:
        return [0.0] * window.buckets

    for stats in tasks.values():
        stats.per_minute, stats.failed_per_minute = empty_bars(), empty_bars()

    size = int(window.bucket.total_seconds())

    def count(name: str, status: str, bar: int, n: int) -> None:
        stats = task(name)
        if not stats.per_minute:
            stats.per_minute, stats.failed_per_minute = empty_bars(), empty_bars()
        stats.counts[status] = stats.counts.get(status, 0) + n
        rate = n / (size / 60)
        if 0 <= bar < window.buckets:
            stats.per_minute[bar] += rate
            if status == State.FAILED:
                stats.failed_per_minute[bar] += rate

    if window.from_rollups:
        # 1-2. Counts, bars and percentiles from the hourly rollups (and the runs of the
        #      hours not rolled up yet).
        _from_rollups(window, since, until, task, count)
    else:
        # 1. Runs by task, status and chart bar: the counts by status are the sums of its
        #    bars, so one pass over the window gives both.
        per_bar = (in_window.order_by()
                   .annotate(bar=BucketIndex("created_at", int(since.timestamp()), size))
                   .values("task_name", "status", "bar").annotate(n=Count("*")))
        for group in per_bar:
            count(group["task_name"], group["status"], group["bar"], group["n"])

        # 1b. Of those FAILED, the runs failing with a retry to come (WILL_RETRY in
        #     models.py): moved to their own count, so FAILED stays final. Only FAILED runs
        #     are read (the status index), and only when the window holds some. (Rollups
        #     count by the shown status already.)
        if any(stats.count(State.FAILED) for stats in tasks.values()):
            _move_will_retry(in_window, since, size, window.buckets, task)

        # 2. Run duration and time in queue percentiles.
        for name, found in timing_percentiles(in_window).items():
            stats = task(name)
            stats.p50, stats.p95 = found["run"]
            stats.queue_p50, stats.queue_p95 = found["queue"]

    # 3. What is queued or running now, whenever it was created.
    active = (TaskExecution.objects.filter(status__in=ACTIVE_STATES).order_by()
              .values("task_name", "status").annotate(n=Count("*"), oldest=Min("created_at")))
    for pending in active:
        stats = task(pending["task_name"])
        if pending["status"] == State.READY:
            stats.ready_now, stats.oldest_ready = pending["n"], pending["oldest"]
        else:
            stats.running_now = pending["n"]
    for stats in tasks.values():
        if not stats.per_minute:  # first seen in step 3
            stats.per_minute, stats.failed_per_minute = empty_bars(), empty_bars()

    # 4. The runs in progress, to link to (only asked for when something runs).
    running = list(
        TaskExecution.objects.filter(status=State.RUNNING)
        .only("id", "result_id", "task_name", "status", "trigger", "attempts", "started_at",
              "created_at")
        .order_by("-created_at", "-id")[:RUNNING_LIST_LIMIT]
    ) if any(stats.running_now for stats in tasks.values()) else []

    return Overview(window=window, since=since, until=until, tasks=list(tasks.values()),
                    running=running)


def _move_will_retry(in_window: QuerySet, since: datetime, size: int, buckets: int,
                     task: Any) -> None:
    """Move the window's failing runs (will retry) from FAILED to WILL_RETRY, per bar too."""
    failing = (in_window.filter(WILL_RETRY).order_by()
               .annotate(bar=BucketIndex("created_at", int(since.timestamp()), size))
               .values("task_name", "bar").annotate(n=Count("*")))
    for group in failing:
        stats = task(group["task_name"])
        stats.counts[State.FAILED] -= group["n"]
        stats.counts[ShownStatus.WILL_RETRY] = (stats.count(ShownStatus.WILL_RETRY)
                                                + group["n"])
        if 0 <= group["bar"] < buckets:
            bar = group["bar"]
            # Rounded: the sum of rates less a part of it can leave a speck of a float.
            stats.failed_per_minute[bar] = max(
                0.0, round(stats.failed_per_minute[bar] - group["n"] / (size / 60), 9))


def _from_rollups(window: Window, since: datetime, until: datetime,
                  task: Callable[[str], TaskStats],
                  count: Callable[[str, str, int, int], None]) -> None:
    from . import rollups

    summed = rollups.window(since, until, window.bucket)
    for (name, bar), counts in summed.counts.items():
        for status, n in counts.items():
            count(name, status, bar, n)
    for name, durations in summed.durations.items():
        stats = task(name)
        stats.p50, stats.p95 = (_rounded(rollups.percentile(durations, f))
                                for f in (0.5, 0.95))
        queued = summed.queued[name]
        stats.queue_p50, stats.queue_p95 = (_rounded(rollups.percentile(queued, f))
                                            for f in (0.5, 0.95))


def recent_failures(since: datetime, until: datetime,
                    limit: int = RECENT_FAILURES_LIMIT) -> list[TaskExecution]:
    """The newest FAILED runs created in [since, until), each with its last error's class:
    final failures and failing runs (will retry) alike, each telling which it is.

    One query along the (status, created_at) index; the class is read in the database, so
    the tracebacks beside it are not loaded.
    """
    return list(
        TaskExecution.objects.filter(status=State.FAILED, created_at__gte=since,
                                     created_at__lt=until)
        .only("id", "result_id", "task_name", "status", "attempts", "gave_up", "message_id",
              "created_at", "finished_at")
        .annotate(error_class=last_error_class())
        .order_by("-created_at", "-id")[:limit]
    )
