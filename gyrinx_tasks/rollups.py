"""Hourly rollups per task that outlive the runs: counts by status, and histograms of run
duration (first start → finish) and of time in queue (created → first start).

Nothing here runs on the push path. ``refresh()`` recounts the stored runs of recent hours
(``tasks_rollup``, the ``roll_up_and_prune`` task, and every ``tasks_prune``); ``tasks_prune``
adds what it deletes to the hour's ``pruned`` row in the same transaction as the delete.
The overview's long windows read the rows for the hours before ``RollupMark.until`` and count
later hours from the runs (gyrinx_tasks/stats.py).

Buckets are fixed (``EDGES``), so rows of any hours add up. A percentile read from a
histogram lies in the bucket of the run at that rank: it agrees with the exact percentile
to within one bucket.
"""

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, Q, Value, When
from django.utils import timezone

from .expressions import BucketIndex
from .models import SHOWN_STATUS, RollupMark, State, TaskExecution, TaskRollup

HOUR = timedelta(hours=1)
# Upper bounds in seconds, a 1-2-5 series from a millisecond to a week: bucket 0 holds
# [0, 1 ms), bucket i holds [EDGES[i-1], EDGES[i]), the last one a week and more.
EDGES: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300,
    600, 1200, 1800, 3600, 7200, 21600, 43200, 86400, 172800, 604800,
)
BUCKETS = len(EDGES) + 1
# Runs whose duration means something (as in gyrinx_tasks/stats.py).
TIMED_STATES = (State.SUCCESSFUL, State.FAILED)
# A refresh recounts this many complete hours back from now: a run's outcome is usually
# known within minutes, and tasks_prune recounts an hour before it deletes from it anyway.
DEFAULT_REFRESH_HOURS = 48
# A refresh recounts a few hours per transaction: about this many runs each (the step
# follows the runs per hour seen so far), between one hour and a week of hours.
REFRESH_STEP_RUNS = 100_000
REFRESH_STEP_HOURS = 6  # the first step
REFRESH_MAX_STEP_HOURS = 168
MARK = "hourly"


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def bucket_of(seconds: float) -> int:
    return bisect_right(EDGES, seconds)


def bucket_bounds(index: int) -> tuple[float, float]:
    return (EDGES[index - 1] if index else 0.0,
            EDGES[index] if index < len(EDGES) else math.inf)


@dataclass
class Tally:
    """One task's runs in one hour (or many hours added up)."""

    counts: dict[str, int] = field(default_factory=dict)
    durations: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    queued: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    @classmethod
    def of(cls, row: TaskRollup) -> "Tally":
        return cls(dict(row.counts), _sized(row.durations), _sized(row.queued))

    def add(self, other: "Tally", sign: int = 1) -> "Tally":
        for status, n in other.counts.items():
            self.counts[status] = self.counts.get(status, 0) + sign * n
        self.counts = {status: n for status, n in self.counts.items() if n}
        self.durations = [a + sign * b for a, b in zip(self.durations, other.durations,
                                                       strict=True)]
        self.queued = [a + sign * b for a, b in zip(self.queued, other.queued, strict=True)]
        return self

    @property
    def empty(self) -> bool:
        return not self.counts and not any(self.durations) and not any(self.queued)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def write(self, row: TaskRollup) -> TaskRollup:
        row.counts, row.durations, row.queued = self.counts, self.durations, self.queued
        return row


def _sized(values: Iterable[int]) -> list[int]:
    values = list(values)[:BUCKETS]
    return values + [0] * (BUCKETS - len(values))


Key = tuple[str, datetime]  # task name, hour


# --- Counting runs, in the database ---------------------------------------------------

def _bucket(seconds_expression: Any, only_if: Q | None = None) -> Case:
    """Which EDGES bucket a duration falls in (NULL when ``only_if`` does not hold)."""
    whens = [When(~only_if, then=Value(None))] if only_if is not None else []
    whens += [When(Q(**{f"{seconds_expression}__lt": timedelta(seconds=edge)}), then=Value(i))
              for i, edge in enumerate(EDGES)]
    return Case(*whens, default=Value(len(EDGES)), output_field=models.IntegerField())


def tally(runs: models.QuerySet) -> dict[Key, Tally]:
    """The runs in ``runs`` counted per task and hour of created_at, in two grouped queries
    (so the cost is the database's, and the memory is the number of groups)."""
    timed = Q(status__in=TIMED_STATES, started_at__isnull=False, finished_at__isnull=False)
    hour = BucketIndex("created_at", 0, 3600)
    runs = runs.order_by().annotate(
        _ran=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()),
        _waited=ExpressionWrapper(F("started_at") - F("created_at"),
                                  output_field=DurationField()),
    )
    found: dict[Key, Tally] = {}

    def at(name: str, hour_number: int) -> Tally:
        key = (name, datetime.fromtimestamp(hour_number * 3600, tz=UTC))
        if key not in found:
            found[key] = Tally()
        return found[key]

    # Counted by the status staff see (models.SHOWN_STATUS): failing runs that will retry
    # apart from final failures, as the overview's short windows count them.
    by_status = (runs.annotate(_hour=hour, _bucket=_bucket("_ran", timed), _shown=SHOWN_STATUS)
                 .values("task_name", "_hour", "_shown", "_bucket").annotate(n=Count("*")))
    for group in by_status:
        counted = at(group["task_name"], group["_hour"])
        counted.counts[group["_shown"]] = counted.counts.get(group["_shown"], 0) + group["n"]
        if group["_bucket"] is not None:
            counted.durations[group["_bucket"]] += group["n"]
    by_wait = (runs.filter(started_at__isnull=False)
               .annotate(_hour=hour, _bucket=_bucket("_waited"))
               .values("task_name", "_hour", "_bucket").annotate(n=Count("*")))
    for group in by_wait:
        at(group["task_name"], group["_hour"]).queued[group["_bucket"]] += group["n"]
    return found


def in_hours(start: datetime, end: datetime, using: str | None = None) -> models.QuerySet:
    runs = TaskExecution.objects.all()
    if using:
        runs = runs.using(using)
    return runs.filter(created_at__gte=start, created_at__lt=end)


# --- Percentiles from histograms ----------------------------------------------------------

def percentile(histogram: list[int], fraction: float) -> float | None:
    """The ``fraction`` percentile of the values counted in ``histogram``: the rank is
    percentile_cont's (fraction × (n − 1)), placed linearly inside the bucket that holds it.
    A rank in the open last bucket reads as its lower edge."""
    total = sum(histogram)
    if not total:
        return None
    rank = fraction * (total - 1)
    below = 0
    for index, n in enumerate(histogram):
        if n and rank < below + n:
            low, high = bucket_bounds(index)
            if math.isinf(high):
                return low
            return low + (high - low) * (rank - below + 0.5) / n
        below += n
    return bucket_bounds(len(histogram) - 1)[0]  # pragma: no cover - rank < total always


# --- Keeping the rows current -------------------------------------------------------------

def lock_mark(using: str) -> RollupMark:
    """The mark row, locked until the transaction ends (call inside one)."""
    mark, _ = RollupMark.objects.using(using).select_for_update().get_or_create(name=MARK)
    return mark


def mark_until(using: str | None = None) -> datetime | None:
    using = using or router.db_for_read(RollupMark)
    return (RollupMark.objects.using(using).filter(name=MARK)
            .values_list("until", flat=True).first())


def replace_stored(start: datetime, end: datetime, counted: dict[Key, Tally],
                   using: str) -> int:
    """Put ``counted`` in place of the stored-runs rows of [start, end); rows written."""
    TaskRollup.objects.using(using).filter(pruned=False, hour__gte=start,
                                           hour__lt=end).delete()
    rows = [tally_.write(TaskRollup(task_name=name, hour=hour, pruned=False))
            for (name, hour), tally_ in counted.items() if not tally_.empty]
    TaskRollup.objects.using(using).bulk_create(rows)
    return len(rows)


def recount(keys: Iterable[Key], using: str) -> set[Key]:
    """Count the stored runs of these tasks again, over the hours from the first key's to
    the last one's, in place of their rows (one rectangle: two grouped queries, one delete,
    one insert). The keys recounted, which include ``keys``."""
    keys = set(keys)
    if not keys:
        return set()
    names = {name for name, _hour in keys}
    first = min(hour for _name, hour in keys)
    last = max(hour for _name, hour in keys)
    counted = tally(in_hours(first, last + HOUR, using).filter(task_name__in=names))
    TaskRollup.objects.using(using).filter(pruned=False, task_name__in=names, hour__gte=first,
                                           hour__lte=last).delete()
    TaskRollup.objects.using(using).bulk_create(
        [tally_.write(TaskRollup(task_name=name, hour=hour, pruned=False))
         for (name, hour), tally_ in counted.items() if not tally_.empty])
    return keys | set(counted)


def add_to(rows: dict[Key, Tally], pruned: bool, using: str, sign: int = 1) -> None:
    """Add (or with ``sign`` −1 take away) tallies to the rows of their task and hour, in a
    few statements whatever the number of rows."""
    if not rows:
        return
    names = {name for name, _hour in rows}
    hours = {hour for _name, hour in rows}
    existing = {(row.task_name, row.hour): row for row in TaskRollup.objects.using(using)
                .filter(pruned=pruned, task_name__in=names, hour__in=hours)}
    changed, created, emptied = [], [], []
    for key, change in rows.items():
        row = existing.get(key)
        new = (Tally.of(row) if row is not None else Tally()).add(change, sign)
        if sign < 0 and (row is None or any(
                n < 0 for n in [*new.counts.values(), *new.durations, *new.queued])):
            # Counted before some of these runs existed or changed (the caller recounts
            # first, so only by a writer outside the mark's lock): count the hour's stored
            # runs, which still include these, and take these away.
            new = tally(in_hours(key[1], key[1] + HOUR, using).filter(
                task_name=key[0])).get(key, Tally()).add(change, -1)
        if new.empty:
            if row is not None:
                emptied.append(row.pk)
        elif row is None:
            created.append(new.write(TaskRollup(task_name=key[0], hour=key[1], pruned=pruned)))
        else:
            row.updated_at = timezone.now()  # bulk_update() leaves auto_now alone
            changed.append(new.write(row))
    manager = TaskRollup.objects.using(using)
    if emptied:
        manager.filter(pk__in=emptied).delete()
    fields = ["counts", "durations", "queued", "updated_at"]
    if changed and connections[using].features.supports_update_conflicts_with_target:
        # One INSERT ... ON CONFLICT DO UPDATE for the changed and the new rows: a short
        # statement, where bulk_update() writes a CASE per field with a branch per row.
        manager.bulk_create(
            [*created, *(TaskRollup(task_name=row.task_name, hour=row.hour, pruned=pruned,
                                    counts=row.counts, durations=row.durations,
                                    queued=row.queued) for row in changed)],
            update_conflicts=True, unique_fields=["task_name", "hour", "pruned"],
            update_fields=fields)
        return
    if changed:
        manager.bulk_update(changed, fields)
    if created:
        manager.bulk_create(created)


@dataclass
class Refreshed:
    start: datetime
    end: datetime
    rows: int = 0
    hours: int = 0


def refresh(now: datetime | None = None, hours: int = DEFAULT_REFRESH_HOURS,
            using: str | None = None,
            progress: Callable[[Refreshed], None] | None = None) -> Refreshed:
    """Recount the stored runs of the complete hours before now, ``hours`` back, and as much
    further back as the last refresh was late (the first refresh counts every stored run).

    A few hours per transaction, each holding the mark's lock: two refreshes, or a refresh
    and a prune, never interleave their writes.
    """
    using = using or router.db_for_write(TaskRollup)
    end = floor_hour(now or timezone.now())
    start = end - HOUR * hours
    previous = mark_until(using)
    if previous is None:
        oldest = (TaskExecution.objects.using(using).order_by("created_at")
                  .values_list("created_at", flat=True).first())
        start = min(start, floor_hour(oldest)) if oldest else start
    else:
        start = min(start, previous - HOUR * hours)
    done = Refreshed(start, end)
    step = REFRESH_STEP_HOURS
    at = start
    while at < end:
        upto = min(at + HOUR * step, end)
        with transaction.atomic(using=using):
            lock_mark(using)
            counted = tally(in_hours(at, upto, using))
            done.rows += replace_stored(at, upto, counted, using)
        hours = int((upto - at) / HOUR)
        done.hours += hours
        at = upto
        # The next step: about REFRESH_STEP_RUNS runs at this step's runs per hour, so a
        # first refresh over sparse months takes few transactions and busy hours stay short.
        per_hour = sum(tally_.total for tally_ in counted.values()) / hours
        step = max(1, min(REFRESH_MAX_STEP_HOURS,
                          int(REFRESH_STEP_RUNS / per_hour) if per_hour else
                          REFRESH_MAX_STEP_HOURS, step * 4))
        if progress:
            progress(done)
    with transaction.atomic(using=using):
        mark = lock_mark(using)
        if mark.until is None or mark.until < end:
            mark.until = end
            mark.save(using=using, update_fields=["until"])
    return done


# --- Reading them -------------------------------------------------------------------------

@dataclass
class Summed:
    """A window's rollups added up: runs by status per task and chart bar, and each task's
    two histograms over the whole window."""

    counts: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    durations: dict[str, list[int]] = field(default_factory=dict)
    queued: dict[str, list[int]] = field(default_factory=dict)

    def add(self, name: str, bar: int, counts: dict[str, int], durations: Iterable[int],
            queued: Iterable[int]) -> None:
        slot = self.counts.setdefault((name, bar), {})
        for status, n in counts.items():
            slot[status] = slot.get(status, 0) + n
        for histogram, values in ((self.durations, durations), (self.queued, queued)):
            summed = histogram.get(name)
            if summed is None:
                summed = histogram[name] = [0] * BUCKETS
            for index, n in enumerate(values):
                if n and index < BUCKETS:
                    summed[index] += n


def window(since: datetime, until: datetime, bar: timedelta,
           using: str | None = None) -> Summed:
    """The hours in [since, until) added up per task and bar of ``bar`` length: the rows of
    the pruned runs, the rows of the stored runs up to the mark, and the stored runs after
    the mark counted from the runs (normally the current hour and the one before). One pass
    over the rows, whose number follows tasks and hours, never runs."""
    using = using or router.db_for_read(TaskRollup)
    covered = mark_until(using)
    live_from = max(since, min(covered, until)) if covered else since
    found = Summed()
    rows = (TaskRollup.objects.using(using).filter(hour__gte=since, hour__lt=until)
            .filter(Q(pruned=True) | Q(hour__lt=live_from)).order_by()
            .values_list("task_name", "hour", "counts", "durations", "queued"))
    for name, hour, counts, durations, queued in rows.iterator(chunk_size=5000):
        found.add(name, (hour - since) // bar, counts, durations, queued)
    if live_from < until:
        for (name, hour), counted in tally(in_hours(live_from, until, using)).items():
            found.add(name, (hour - since) // bar, counted.counts, counted.durations,
                      counted.queued)
    return found
