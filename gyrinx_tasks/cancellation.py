"""Cancel READY runs: the task never runs, and its deliveries are acknowledged unrun.

A cancel is one conditional transition (TaskExecution.record_cancelled): READY → CANCELLED,
only if the run is still as read, with the compare-and-set a delivery's claim uses too, so a
cancel and a delivery claiming the run at the same moment make exactly one winner. A RUNNING
run cannot be cancelled: its task has started on a worker, and nothing here can stop it.
When Pub/Sub then delivers the cancelled run's message, the claim acknowledges it without
running the task (outcome ``cancelled``). The run ends when it is cancelled, so Django's
``task_finished`` is sent then, and ``TaskResult`` shows it FAILED (Django has no cancelled
status) with the reason as an error of class ``gyrinx_tasks.exceptions.TaskCancelled``.

``gyrinx_tasks.cancel(result_id)`` (Python), the admin's Cancel button on a run's page and
its bulk action (a selection, or every run matching a filter up to TASKS_ADMIN_RETRY_LIMIT)
all call these functions.
"""

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import batched
from typing import Any, NamedTuple

from django.db import router
from django.tasks import TaskResult, task_backends
from django.tasks.exceptions import InvalidTaskBackend, TaskResultDoesNotExist

from .exceptions import RegistryError, UnknownTask
from .models import PROGRESS_FIELDS, State, TaskExecution
from .registry import get_route

logger = logging.getLogger("gyrinx_tasks")

# Rows read per round trip in a bulk cancel; each run is still its own conditional UPDATE.
CHUNK_SIZE = 1000
# A single cancel that loses to a change that is not a start (a note, a publish confirmed or
# not) reads the run again and tries again, this many times at most.
TRIES = 3


@dataclass(frozen=True)
class Cancellation:
    """What a cancel did: ``cancelled``, the run's ``status`` now, and a sentence."""

    result_id: str
    cancelled: bool
    status: str
    detail: str


def who(by: Any) -> str:
    """A user (its username) or a name, as a cancel records it."""
    if by is None:
        return ""
    username = getattr(by, "get_username", None)
    return str(username() if callable(username) else by)


def cancelled_reason(by: Any) -> str:
    name = who(by)
    return (
        f"Cancelled{' by ' + name if name else ''} before it started: the task is not "
        "run, and Pub/Sub's deliveries of it are acknowledged without running it."
    )


def not_cancellable_reason(execution: TaskExecution) -> str:
    """Why ``execution`` cannot be cancelled in its state, or "" if it can."""
    status = execution.status
    if status == State.READY:
        return ""
    if status == State.RUNNING:
        return (
            "The run is running: its task has started on a worker, and a task that has "
            "started cannot be stopped from here. Wait for it to end; to stop further "
            "attempts if it fails, turn its task's kill switch off."
        )
    if status == State.FAILED and not execution.gave_up:
        return (
            "The run failed and Pub/Sub will deliver it again; only a READY run, which "
            "no delivery has started, can be cancelled. To stop further attempts, turn "
            "its task's kill switch off (skip)."
        )
    return (
        f"The run is {State(status).label.lower()}: it has already ended, and only a "
        "READY run can be cancelled."
    )


def backend_refusal(alias: str) -> str:
    """Why runs of backend ``alias`` cannot be cancelled here, or "" if they can.

    A run of another configured backend (recorded from Django's task signals) is only a
    mirror: cancelling the record would not stop the task. A run whose alias is no longer
    configured can be: the push endpoint claims it by its result id.
    """
    from .backend import PubSubBackend

    try:
        backend = task_backends[alias]
    except InvalidTaskBackend:
        return ""
    if isinstance(backend, PubSubBackend):
        return ""
    return (
        f"The run belongs to the {alias!r} backend ({type(backend).__name__}), not to "
        "a PubSubBackend: gyrinx_tasks only records it and cannot stop it."
    )


def refusal(execution: TaskExecution) -> str:
    return not_cancellable_reason(execution) or backend_refusal(execution.backend)


def _announce(execution: TaskExecution) -> None:
    """Django's task_finished, once, now that the run has ended; only for a routed task
    (an unrouted run has no Task to describe it)."""
    from .runner import announce_finished

    try:
        route = get_route(execution.task_name)
    except (UnknownTask, RegistryError):
        return
    announce_finished(execution, route.task)


# Why a cancel did not happen when the run kept changing while it was being cancelled.
CHANGED = (
    "The run changed while it was being cancelled (a delivery started it, or another "
    "change); reload the page to see its state."
)


def cancel_run(execution: TaskExecution, by: Any = None) -> Cancellation:
    """Cancel ``execution`` if it is READY; say what happened (never raises for its state).

    ``by`` is the user (or a name) recorded as having cancelled it.
    """
    db = router.db_for_write(TaskExecution)
    current: TaskExecution | None = execution
    for _ in range(TRIES):
        if current is None:
            return Cancellation(
                execution.result_id, False, "", "The run was deleted while it was being cancelled."
            )
        reason = refusal(current)
        if reason:
            return Cancellation(current.result_id, False, current.status, reason)
        if current.record_cancelled(db, cancelled_reason(by)):
            if current is not execution:
                execution.__dict__.update(current.__dict__)
            logger.info(
                "Cancelled %s (%s)%s",
                current.task_name,
                current.result_id,
                f" by {who(by)}" if who(by) else "",
            )
            _announce(current)
            return Cancellation(current.result_id, True, current.status, current.status_detail)
        # Lost to another writer: decide again on what the row holds now.
        current = TaskExecution.objects.using(db).filter(pk=execution.pk).first()
    return Cancellation(
        execution.result_id, False, current.status if current is not None else "", CHANGED
    )


def cancel(result_id: "str | TaskResult", *, by: str = "") -> Cancellation:
    """Cancel the READY run with this result id (or Django TaskResult).

    Returns a Cancellation: ``cancelled`` True if the run was READY and is now CANCELLED (its
    task will not run); False with the reason if it was not (RUNNING, or already ended).
    ``by`` names who or what cancelled it, for the run's record (default: "code").
    Raises django.tasks.exceptions.TaskResultDoesNotExist for an unknown id.
    """
    if isinstance(result_id, TaskResult):
        result_id = result_id.id
    db = router.db_for_write(TaskExecution)
    execution = TaskExecution.objects.using(db).filter(result_id=str(result_id)).first()
    if execution is None:
        raise TaskResultDoesNotExist(
            f"No task run has the result id {result_id!r}, so there is nothing to cancel "
            "(check the id: it is TaskResult.id, as enqueue() returned it)."
        )
    return cancel_run(execution, by or "code")


# --- In bulk: a selection, or every run matching a filter ------------------------------------


@dataclass(frozen=True)
class CancelSelection:
    """How many runs a selection holds, counted no further than ``limit`` + 1."""

    total: int
    cancellable: int
    running: int
    limit: int

    @property
    def over_limit(self) -> bool:
        return self.cancellable > self.limit


def count_selection(queryset: Any, limit: int) -> CancelSelection:
    """LIMIT-ed counts, so a million rows are not scanned."""
    return CancelSelection(
        total=queryset[: limit + 1].count(),
        cancellable=queryset.filter(status=State.READY)[: limit + 1].count(),
        running=queryset.filter(status=State.RUNNING)[: limit + 1].count(),
        limit=limit,
    )


class Cancelled(NamedTuple):
    """One run a bulk cancel cancelled."""

    pk: int
    label: str


@dataclass
class CancelReport:
    """What a bulk cancel did. Counts only: it never holds the rows themselves."""

    cancelled: int = 0
    running: int = 0  # selected RUNNING runs, left alone (counted to limit + 1)
    ended: int = 0  # selected runs that already ended (or will be redelivered), left alone
    changed: int = 0  # READY when selected, started (or changed) before the cancel: left alone
    refused: Counter = field(default_factory=Counter)  # sentence -> number of runs


# What a bulk cancel reads of each run: what its transition compares and writes.
RUN_FIELDS = (
    "pk",
    "result_id",
    "task_name",
    "backend",
    "queue_name",
    "args",
    "kwargs",
    "enqueued_at",
    *PROGRESS_FIELDS,
)


def cancel_queryset(
    queryset: Any,
    by: Any = None,
    limit: int | None = None,
    on_cancelled: Callable[[list[Cancelled]], None] | None = None,
) -> CancelReport:
    """Cancel every READY run in ``queryset``, each with its own conditional transition.

    Refuses the whole selection (RetryLimitExceeded, nothing cancelled) when more than
    ``limit`` runs (default TASKS_ADMIN_RETRY_LIMIT, the cap bulk retry uses) are READY.
    Runs in other states are counted and left alone. ``on_cancelled`` is called per chunk.
    """
    from .conf import tasks_settings
    from .retry import RetryLimitExceeded, limit_message

    if limit is None:
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
    selection = count_selection(queryset, limit)
    if selection.over_limit:
        raise RetryLimitExceeded(limit_message(limit, "cancelled", "cancel"))
    report = CancelReport(running=selection.running)
    report.ended = queryset.exclude(status__in=(State.READY, State.RUNNING))[: limit + 1].count()
    db = router.db_for_write(TaskExecution)
    # Only runs that existed when the selection was counted: one enqueued meanwhile is not
    # part of what staff confirmed.
    top = TaskExecution.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    # defer(None): the changelist's queryset defers the heavy columns, which would then be
    # read one query per run.
    rows = (
        queryset.filter(status=State.READY, pk__lte=top)
        .order_by("pk")
        .defer(None)
        .only(*RUN_FIELDS)
        .iterator(chunk_size=CHUNK_SIZE)
    )
    backends: dict[str, str] = {}
    for chunk in batched(rows, CHUNK_SIZE):
        done = []
        for execution in chunk:
            if execution.backend not in backends:
                backends[execution.backend] = backend_refusal(execution.backend)
            reason = backends[execution.backend]
            if reason:
                report.refused[reason] += 1
                continue
            label = str(execution)
            if not execution.record_cancelled(db, cancelled_reason(by)):
                report.changed += 1  # a delivery started it (or changed it) meanwhile
                continue
            report.cancelled += 1
            done.append(Cancelled(execution.pk, label))
            _announce(execution)
        if done:
            logger.info("Cancelled %s runs%s", len(done), f" by {who(by)}" if who(by) else "")
            if on_cancelled:
                on_cancelled(done)
    return report
