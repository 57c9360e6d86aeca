"""Give up a RUNNING run whose attempt is past its ack deadline, and retry it as a new run.

A run stuck RUNNING past its route's ``ack_deadline`` (health.StuckKind.RUNNING): its worker
died or overran, and Pub/Sub no longer waits for the attempt's answer. Pub/Sub redelivers
the message and the next delivery starts the run again, unless the message is gone
(retention ended, dead-lettered) or the redeliveries back off for longer than staff in an
incident can wait. "Give up and retry" is the recovery:

* one conditional transition (TaskExecution.record_abandoned): RUNNING, attempt N, as read
  → FAILED for good (``gave_up``), "given up as lost by … and retried as run …", in the
  transaction that inserts the new run (trigger ``retry``, ``retry_of`` the original), which
  is then published like any retry. A delivery that started attempt N+1 first, or attempt
  N's outcome written first, makes it change no row: nothing is retried, and staff are told
  the run changed;
* a later redelivery of the original finds it settled and is acknowledged unrun
  (``duplicate``), as for a run a retry settled (issue 16, item 9);
* if the worker was only slow and finishes, its outcome's conditional write changes no row:
  record.py notes the outcome on the original and logs a WARNING, and the run stays FAILED.
  The task may then have run twice (the slow attempt and the retry): the confirmation says
  so before anything is done.

Refused with a sentence while the attempt is within its ack deadline (it may really be
running), and for runs of other backends, tasks no longer in the registry or switched off,
and runs a retry already stands for. The run's page, the run list's bulk action (on the
"stuck" filter) and the tests call these functions; they need ``retry_taskexecution``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import batched
from typing import Any

from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend
from django.utils import timezone

from .backend import PubSubBackend
from .dates import format_when
from .health import StuckKind, ack_deadline_for, stuck_filter
from .models import PROGRESS_FIELDS, State, TaskExecution
from .retry import (
    CHUNK_SIZE,
    ORIGINAL_FIELDS,
    Retried,
    RetryLimitExceeded,
    RetryPublishFailed,
    RetryRefused,
    RetryReport,
    _label,
    _retry_pubsub,
    limit_message,
    live_retry_refusal,
    route_refusal,
)

# Why nothing was done when the run changed between the page and the click.
CHANGED = (
    "The run changed while it was being given up: a redelivery started it again, or "
    "its attempt's outcome was recorded. Reload the page to see its state."
)

# What a bulk "give up and retry" reads of each original: its transition, its message and
# its refusal check.
ABANDON_FIELDS = tuple(
    dict.fromkeys((*ORIGINAL_FIELDS, *PROGRESS_FIELDS, "task_path", "created_at", "enqueued_at"))
)


def _who(user: Any) -> str:
    return getattr(user, "get_username", lambda: "")() if user is not None else ""


def attempt_started(execution: TaskExecution) -> datetime:
    """When the run's current attempt started (its creation if no attempt time is kept), as
    the stuck filter judges it (health._attempted_before)."""
    return execution.last_attempted_at or execution.created_at


def _seconds(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def _backend_refusal(execution: TaskExecution, route: Any) -> str:
    for alias, whose in ((execution.backend, "run"), (route.task.backend, "task")):
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend:
            if whose == "run":
                continue  # an alias no longer configured: the push endpoint still claims it
            backend = None
        if not isinstance(backend, PubSubBackend):
            return (
                f"The {whose}'s backend {alias!r} is not a PubSubBackend: nothing "
                "redelivers this run through the push endpoint, so it cannot be given up "
                "and retried here."
            )
    return ""


def deadline_refusal(execution: TaskExecution, route: Any, now: datetime) -> str:
    """Why the run is not (yet) past its ack deadline, or "" if it is."""
    deadline = ack_deadline_for(route)
    started = attempt_started(execution)
    if now - started > timedelta(seconds=deadline):
        return ""
    return (
        f"Attempt {execution.attempts} started {_seconds(now - started)} ago, within its "
        f"ack deadline ({deadline} s): it may really be running, and Pub/Sub is still "
        "waiting for its answer. If it is still running at "
        f"{format_when(started + timedelta(seconds=deadline), seconds=True)}, it can be "
        "given up and retried."
    )


def abandon_refusal(
    execution: TaskExecution,
    now: datetime | None = None,
    routes: dict[str, tuple[Any, str]] | None = None,
    live_retry: bool = True,
) -> str:
    """Why ``execution`` cannot be given up and retried now, or "" if it can.

    ``routes`` caches route_refusal() per task (a bulk action); ``live_retry=False`` skips
    the check for a retry that stands for the run (a bulk action's query excludes those)."""
    if execution.status != State.RUNNING:
        return (
            f"The run is {State(execution.status).label.lower()}; only a RUNNING run "
            "whose attempt is past its ack deadline can be given up and retried."
        )
    routes = {} if routes is None else routes
    if execution.task_name not in routes:
        routes[execution.task_name] = route_refusal(execution.task_name)
    route, reason = routes[execution.task_name]
    if reason:
        return reason
    reason = _backend_refusal(execution, route) or deadline_refusal(
        execution, route, now or timezone.now()
    )
    if reason or not live_retry:
        return reason
    return live_retry_refusal(execution)


def _mark_abandoned(
    original: TaskExecution, new_result_id: str, route: Any, user: Any, using: str
) -> bool:
    who = _who(user)
    sentence = (
        f"Attempt {original.attempts} given up as lost"
        + (f" by {who}" if who else "")
        + f": it ran longer than its ack deadline ({ack_deadline_for(route)} s) "
        f"without recording an outcome. Retried as run {new_result_id}. Pub/Sub's "
        "further deliveries of this run are acknowledged without running it; if its "
        "worker was only slow and finishes, its outcome is noted here, not recorded "
        "as the run's."
    )
    return original.record_abandoned(using, sentence)


def _abandon(
    bulk: list[tuple[TaskExecution, Any, Any, str]], user: Any, report: RetryReport
) -> list[Retried]:
    """Give up and retry each original: retry._retry_pubsub with record_abandoned (which
    also sends Django's task_finished for each original given up: it has ended, FAILED)."""
    return _retry_pubsub(bulk, user, report, mark=_mark_abandoned)


def abandon_run(execution: TaskExecution, user: Any = None) -> TaskExecution:
    """Give up ``execution``'s attempt as lost and retry it as a new run; the new run.

    Raises RetryRefused (nothing done; the sentence says why) or RetryPublishFailed (the
    run was given up and the retry recorded, but its publish failed)."""
    routes: dict[str, tuple[Any, str]] = {}
    reason = abandon_refusal(execution, routes=routes)
    if reason:
        raise RetryRefused(reason)
    route = routes[execution.task_name][0]
    backend = task_backends[route.task.backend]
    done = _abandon([(execution, route, backend, str(execution))], user, RetryReport())
    if not done:
        raise RetryRefused(CHANGED)
    new = TaskExecution.objects.get(pk=done[0].new_id)
    if not done[0].published:
        state = (
            "FAILED"
            if new.status == State.FAILED
            else "READY, publish unconfirmed: it runs if Pub/Sub delivers it after all"
        )
        raise RetryPublishFailed(
            f"The run was given up and its retry recorded as run {new.result_id}, but "
            f"publishing it failed ({new.errors[-1]['exception_class_path']}); that run is "
            f"{state}.",
            new,
        )
    return new


# --- A selection: the run list's bulk action -------------------------------------------------


@dataclass(frozen=True)
class AbandonSelection:
    """What a selection holds, each count made no further than ``limit`` + 1."""

    total: int
    abandonable: int  # RUNNING past the ack deadline, no retry stands for it
    within_deadline: int  # RUNNING, attempt within its ack deadline: left alone
    already_retried: int  # RUNNING past the deadline, a retry already stands for it
    limit: int

    @property
    def over_limit(self) -> bool:
        return self.abandonable > self.limit

    @property
    def not_running(self) -> int:
        return max(self.total - self.abandonable - self.within_deadline - self.already_retried, 0)


@dataclass
class AbandonReport(RetryReport):
    """What a bulk "give up and retry" did (``retried``: runs given up and retried)."""

    within_deadline: int = 0


def _stuck(queryset: Any, now: datetime) -> Any:
    return queryset.filter(status=State.RUNNING).filter(stuck_filter(StuckKind.RUNNING, now))


def count_abandon_selection(
    queryset: Any, limit: int, now: datetime | None = None
) -> AbandonSelection:
    now = now or timezone.now()
    stuck = _stuck(queryset, now)
    running = queryset.filter(status=State.RUNNING)
    return AbandonSelection(
        total=queryset[: limit + 1].count(),
        abandonable=stuck.without_live_retry()[: limit + 1].count(),
        within_deadline=running.exclude(pk__in=stuck.values("pk"))[: limit + 1].count(),
        already_retried=stuck.with_live_retry().filter(has_live_retry=True)[: limit + 1].count(),
        limit=limit,
    )


def abandon_queryset(
    queryset: Any,
    user: Any = None,
    limit: int | None = None,
    on_abandoned: Callable[[list[Retried]], None] | None = None,
) -> AbandonReport:
    """Give up and retry every RUNNING run in ``queryset`` whose attempt is past its ack
    deadline (the stuck filter's "running past the ack deadline"), a chunk at a time; the
    others are counted and left alone. More than ``limit`` (default TASKS_ADMIN_RETRY_LIMIT)
    such runs refuse the whole selection (RetryLimitExceeded, nothing done)."""
    from .conf import tasks_settings

    if limit is None:
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
    now = timezone.now()
    selection = count_abandon_selection(queryset, limit, now)
    if selection.over_limit:
        raise RetryLimitExceeded(limit_message(limit, "given up and retried", "give up and retry"))
    report = AbandonReport(
        not_retryable=selection.not_running,
        already_retried=selection.already_retried,
        within_deadline=selection.within_deadline,
    )
    # Only rows that existed when we started: the new runs are READY, never RUNNING, but a
    # bound keeps the walk to what was counted.
    top = TaskExecution.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    rows = (
        _stuck(queryset, now)
        .without_live_retry()
        .filter(pk__lte=top)
        .order_by("pk")
        .defer(None)
        .only(*ABANDON_FIELDS)
        .iterator(chunk_size=CHUNK_SIZE)
    )
    routes: dict[str, tuple[Any, str]] = {}
    for chunk in batched(rows, CHUNK_SIZE):
        bulk = []
        for original in chunk:
            reason = abandon_refusal(original, now, routes, live_retry=False)
            if reason:
                report.refused[reason] += 1
                continue
            route = routes[original.task_name][0]
            bulk.append((original, route, task_backends[route.task.backend], _label(original)))
        done = _abandon(bulk, user, report) if bulk else []
        if on_abandoned and done:
            on_abandoned(done)
    return report
