"""Retention: delete finished runs older than their task's retention, in small chunks.

Each chunk is one short transaction: lock the rollup mark, find the next ``chunk`` runs
(oldest first), add those runs to their hours' pruned rollups, take them out of the
stored-runs rollups, unlink their retries and delete them, each step one statement over the
chunk's range of created_at. Memory stays at one chunk however many runs go.

Never deleted: READY and RUNNING runs, and FAILED runs that Pub/Sub may still redeliver (not
given up, last attempted within Pub/Sub's seven days): a redelivery must find its run.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import router, transaction
from django.db.models import Q, signals
from django.utils import timezone

from . import rollups
from .conf import tasks_settings
from .exceptions import RegistryError
from .models import State, TaskExecution
from .registry import get_routes

DEFAULT_CHUNK = 2000
# Pub/Sub keeps an unacknowledged message for at most seven days.
PUBSUB_REDELIVERY = timedelta(days=7)


def retention_for(route: Any) -> timedelta:
    """The route's retention, else its task's @task(retention=...), else TASKS_RETENTION."""
    return (route.retention or getattr(route.task, "retention", None)
            or tasks_settings.TASKS_RETENTION)


def kept(now: datetime) -> Q:
    """Runs that are never pruned, however old."""
    return (Q(status__in=(State.READY, State.RUNNING))
            | Q(status=State.FAILED, gave_up=False,
                last_attempted_at__gte=now - PUBSUB_REDELIVERY))


@dataclass
class Group:
    """Runs under one retention: one task with its own, or every other task."""

    label: str
    retention: timedelta
    runs: Q
    cutoff: datetime | None = None
    found: int = 0  # prunable when the prune started
    deleted: int = 0


@dataclass
class Pruned:
    groups: list[Group] = field(default_factory=list)
    refreshed: rollups.Refreshed | None = None
    dry_run: bool = False
    finished: bool = True  # False: stopped at max_seconds with runs left for the next prune

    @property
    def found(self) -> int:
        return sum(group.found for group in self.groups)

    @property
    def deleted(self) -> int:
        return sum(group.deleted for group in self.groups)


def groups() -> list[Group]:
    """One group per task whose retention differs from TASKS_RETENTION, then the rest."""
    default = tasks_settings.TASKS_RETENTION
    try:
        routes = get_routes()
    except RegistryError:
        routes = ()  # the registry's check says why; every run gets the default
    own = {route.name: retention_for(route) for route in routes}
    own = {name: retention for name, retention in own.items() if retention != default}
    found = [Group(name, retention, Q(task_name=name)) for name, retention in sorted(own.items())]
    found.append(Group("every other task" if own else "every task", default,
                       ~Q(task_name__in=own) if own else Q()))
    return found


def prune(now: datetime | None = None, dry_run: bool = False, chunk: int = DEFAULT_CHUNK,
          max_seconds: float | None = None, using: str | None = None,
          refresh_hours: int = rollups.DEFAULT_REFRESH_HOURS,
          progress: Callable[[Group], None] | None = None) -> Pruned:
    """Roll up recent hours, then delete each group's prunable runs (``dry_run``: count them).

    ``max_seconds``: stop after the chunk that passes it (a scheduled prune leaves the rest
    to its next firing rather than outlive its ack deadline).
    """
    using = using or router.db_for_write(TaskExecution)
    now = now or timezone.now()
    started = time.monotonic()
    report = Pruned(groups=groups(), dry_run=dry_run)
    if not dry_run:
        report.refreshed = rollups.refresh(now, hours=refresh_hours, using=using)
    for group in report.groups:
        group.cutoff = rollups.floor_hour(now - group.retention)
        candidates = (TaskExecution.objects.using(using)
                      .filter(group.runs, created_at__lt=group.cutoff).exclude(kept(now)))
        group.found = candidates.count()
        if dry_run or not group.found:
            continue
        recounted: set[rollups.Key] = set()
        after: tuple[datetime, int] | None = None
        while True:
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                report.finished = False
                return report
            # Keyset pagination: each chunk starts after the last one, so the runs kept
            # (READY, RUNNING, redeliverable) are read once, not once per chunk.
            page = candidates if after is None else candidates.filter(_after(after))
            deleted, after = _delete_chunk(page, chunk, recounted, using)
            if not deleted:
                break
            group.deleted += deleted
            if progress:
                progress(group)
    return report


def _after(point: tuple[datetime, int]) -> Q:
    """Runs after ``point`` in (created_at, id) order. The plain ``created_at >=`` in front
    gives the database a start in the created_at index, so a chunk's scan does not walk the
    index entries of the runs earlier chunks deleted."""
    return Q(created_at__gte=point[0]) & (Q(created_at__gt=point[0])
                                          | Q(created_at=point[0], pk__gt=point[1]))


def _up_to(point: tuple[datetime, int]) -> Q:
    """Runs up to ``point`` in (created_at, id) order, ``point`` included."""
    return Q(created_at__lte=point[0]) & (Q(created_at__lt=point[0])
                                          | Q(created_at=point[0], pk__lte=point[1]))


class _Raced(Exception):
    """A chunk's runs changed between counting them and deleting them: rolled back."""


def _delete_chunk(candidates: Any, chunk: int, recounted: set[rollups.Key],
                  using: str) -> tuple[int, tuple[datetime, int] | None]:
    """Delete the next ``chunk`` candidates (in created_at, id order) in one transaction.

    The chunk is a range of the candidates, (after, last], not a list of ids: each statement
    (the tally, unlinking retries, the delete) takes a few parameters and reads the range
    along the created_at index, whatever the chunk's size. The delete is one statement; if
    it deletes other runs than the tally counted (a run changed meanwhile), the chunk is
    rolled back and tried again.
    """
    for _attempt in range(3):
        try:
            return _try_chunk(candidates, chunk, recounted, using)
        except _Raced:
            continue
    return _try_chunk(candidates, chunk, recounted, using, exact=True)


def _try_chunk(candidates: Any, chunk: int, recounted: set[rollups.Key], using: str,
               exact: bool = False) -> tuple[int, tuple[datetime, int] | None]:
    with transaction.atomic(using=using):
        rollups.lock_mark(using)
        picked = list(candidates.order_by("created_at", "pk")
                      .values_list("created_at", "pk")[:chunk])
        if not picked:
            return 0, None
        last = picked[-1]
        if exact:
            # Rows locked and named by id: nothing can change between the tally and the
            # delete (the fallback after repeated races; slower, as the parameters grow).
            ids = [pk for _created, pk in picked]
            runs = TaskExecution.objects.using(using).filter(pk__in=ids)
            list(runs.select_for_update().values_list("pk", flat=True))
        else:
            runs = candidates.filter(_up_to(last))
        counted = rollups.tally(runs)
        # The stored-runs rows of these hours were counted when the runs were recent; count
        # them again now, once per prune, before taking these runs out of them.
        # (Remembered only once the chunk commits: a chunk rolled back recounts again.)
        fresh = rollups.recount([key for key in counted if key not in recounted], using)
        rollups.add_to(counted, pruned=False, using=using, sign=-1)
        rollups.add_to(counted, pruned=True, using=using)
        # Retries of these runs lose their link (retry_of is SET_NULL), in one UPDATE.
        (TaskExecution.objects.using(using).filter(retry_of__in=runs.values("pk"))
         .update(retry_of=None))
        deleted = _delete(runs, using)
        if deleted != sum(tally_.total for tally_ in counted.values()):
            raise _Raced
    recounted |= fresh
    return deleted, last


def _delete(runs: Any, using: str) -> int:
    """Delete ``runs``, whose retries were already unlinked; the number deleted.

    One DELETE statement (QuerySet._raw_delete, which Django's own delete uses when nothing
    needs collecting). Django's collector would fetch every run to set retry_of to NULL on
    its retries, done above in one UPDATE, and delete them 100 ids a statement. With
    pre_delete or post_delete receivers for runs, or a Django without _raw_delete, the
    collector's delete runs instead, sending the signals as always.
    """
    model = TaskExecution
    if (hasattr(runs, "_raw_delete") and not signals.pre_delete.has_listeners(model)
            and not signals.post_delete.has_listeners(model)):
        return int(runs._raw_delete(using))
    _total, per_model = runs.only("pk").delete()
    return per_model.get(model._meta.label, 0)
