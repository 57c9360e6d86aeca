"""Retry runs: each retry is a NEW run (trigger ``retry``, ``retry_of`` the original).

The new run goes through the task's own backend, so a retry works on PubSubBackend and on
Django's ImmediateBackend alike. The original is marked as retried by one conditional
transition (TaskExecution.record_retried) in the transaction that records the new run: a run
Pub/Sub still redelivers (FAILED, attempts left) is settled there, so its next delivery is
acknowledged unrun, and a run that already has a retry that may still run (or ran) is not
retried again. A READY run whose publish was never confirmed, or that no delivery has claimed
within its ack deadline, is re-published instead (republish_run). The admin's Retry and
Re-publish buttons, its bulk action and the tests all call these functions.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import batched
from typing import Any, NamedTuple

from django.db import router, transaction
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
from django.utils import timezone

from .backend import Pending, PubSubBackend, enqueue_context
from .exceptions import RegistryError, TaskPublishError, UnknownTask
from .killswitch import kill_switch_reason
from .messages import RECORDED_ATTRIBUTE, build_message, encode_message, trace_attributes
from .models import LIVE_RETRY, PUBLISH_UNCONFIRMED, State, TaskExecution, Trigger
from .registry import get_route
from .results import result_from_execution

logger = logging.getLogger("gyrinx_tasks")

RETRYABLE = (State.FAILED, State.REJECTED, State.SKIPPED)
# Rows read, inserted and published per round trip in a bulk retry.
CHUNK_SIZE = 1000


class RetryError(Exception):
    """A retry was not made as asked; the message says why, in a sentence for staff."""


class RetryRefused(RetryError):
    """The run cannot be retried now (its state, the registry or a kill switch)."""


class RetryLimitExceeded(RetryError):
    """A bulk retry selected more runs than TASKS_ADMIN_RETRY_LIMIT allows."""


class RetryPublishFailed(RetryError):
    """The retry was recorded as a new run, but publishing it failed (the run is FAILED)."""

    def __init__(self, message: str, execution: TaskExecution | None) -> None:
        super().__init__(message)
        self.execution = execution


def not_retryable_reason(status: str) -> str:
    """Why a run in ``status`` cannot be retried, or "" if it can."""
    if status in RETRYABLE:
        return ""
    return (f"The run is {State(status).label.lower()}; only failed, rejected or skipped "
            "runs can be retried.")


def route_refusal(task_name: str) -> tuple[Any, str]:
    """The route to retry ``task_name`` through, or None and the sentence that refuses it."""
    try:
        route = get_route(task_name)
    except UnknownTask:
        return None, (f"Task {task_name!r} is no longer in TASKS_REGISTRY, so it cannot be "
                      "retried; add its TaskRoute back to the registry first.")
    except RegistryError as exc:
        return None, f"Nothing can be retried while the registry cannot be loaded: {exc}"
    reason = kill_switch_reason(route)
    if reason:
        return None, f"{reason} Turn it on before retrying {task_name}."
    return route, ""


def _note(original_result_id: str, user: Any) -> str:
    who = getattr(user, "get_username", lambda: "")() if user is not None else ""
    return f"retry of {original_result_id}" + (f" by {who}" if who else "")


def _retried_sentence(new_result_id: str | None, user: Any, settle: bool) -> str:
    who = getattr(user, "get_username", lambda: "")() if user is not None else ""
    sentence = (f"Retried as run {new_result_id}" if new_result_id else "Retried as a new run")
    sentence += (f" by {who}" if who else "") + "."
    if settle:
        sentence += (" Pub/Sub's further deliveries of this run are acknowledged without "
                     "running it.")
    return sentence


def live_retry_refusal(execution: TaskExecution) -> str:
    """Why ``execution`` must not be retried again (a retry stands for it), or ""."""
    live = (TaskExecution.objects.filter(LIVE_RETRY, retry_of=execution.pk).order_by("-pk")
            .values_list("result_id", "status").first())
    if live is None:
        return ""
    return (f"This run was already retried as run {live[0]}, which is "
            f"{State(live[1]).label.lower()}; retry that run instead if it fails.")


def retry_run(execution: TaskExecution, user: Any = None) -> TaskExecution:
    """Enqueue a new run of ``execution``'s task with the same arguments, and return it.

    Raises RetryRefused (nothing enqueued) or RetryPublishFailed (a FAILED new run).
    """
    reason = not_retryable_reason(execution.status) or live_retry_refusal(execution)
    route = None
    if not reason:
        route, reason = route_refusal(execution.task_name)
    if reason:
        raise RetryRefused(reason)
    assert route is not None
    backend = task_backends[route.task.backend]
    if isinstance(backend, PubSubBackend):
        made = _retry_pubsub([(execution, route, backend, str(execution))], user,
                             RetryReport())
        if not made:
            raise RetryRefused(CHANGED)
        new = TaskExecution.objects.get(pk=made[0].new_id)
        if not made[0].published:
            state = ("FAILED" if new.status == State.FAILED else
                     "READY, publish unconfirmed: it runs if Pub/Sub delivers it after all")
            raise RetryPublishFailed(
                f"The retry was recorded as run {new.result_id}, but publishing it failed "
                f"({new.errors[-1]['exception_class_path']}); that run is {state}.", new)
        return new
    report = RetryReport()
    one = _retry_one(route, execution, str(execution), user, report)
    if one is None:
        raise RetryRefused(next(iter(report.refused), CHANGED))
    return TaskExecution.objects.get(pk=one.new_id)


# Why a retry did not happen when the run changed between the page and the click.
CHANGED = ("The run changed while it was being retried (a delivery, or another retry of it); "
           "reload the page to see its state.")


class Retried(NamedTuple):
    """One run a bulk retry made: the original and its new run."""

    original_id: int
    original_repr: str
    new_id: int
    new_result_id: str
    published: bool
    # The publish failed but may have reached Pub/Sub: the new run stays READY, unconfirmed.
    unconfirmed: bool = False


@dataclass
class RetryReport:
    """What a bulk retry did. Counts only: it never holds the rows themselves."""

    retried: int = 0  # new runs enqueued
    publish_failed: int = 0  # new runs whose publish failed (FAILED, or READY unconfirmed)
    not_retryable: int = 0  # selected runs in other states, left alone (counted to limit + 1)
    already_retried: int = 0  # selected runs a live retry stands for, skipped (to limit + 1)
    changed: int = 0  # runs that changed between the selection and their retry, skipped
    refused: Counter = field(default_factory=Counter)  # sentence -> number of runs


@dataclass(frozen=True)
class Selection:
    """How many runs a selection holds, counted no further than ``limit`` + 1."""

    total: int
    retryable: int
    limit: int
    already_retried: int = 0

    @property
    def over_limit(self) -> bool:
        return self.retryable > self.limit


def _retryable(queryset: Any) -> Any:
    return queryset.filter(status__in=RETRYABLE).without_live_retry()


def count_selection(queryset: Any, limit: int) -> Selection:
    """Count the selection cheaply: LIMIT-ed counts, so a million rows are not scanned."""
    failed = queryset.filter(status__in=RETRYABLE)
    return Selection(
        total=queryset[: limit + 1].count(),
        retryable=_retryable(queryset)[: limit + 1].count(),
        limit=limit,
        already_retried=failed.with_live_retry().filter(has_live_retry=True)[
            : limit + 1].count(),
    )


def limit_message(limit: int, done: str = "retried", do: str = "retry") -> str:
    """Why a bulk action (retry; cancel, which shares the cap) was refused as too large."""
    return (f"More than {limit:,} of the selected runs can be {done}, and one click may "
            f"{do} at most {limit:,} (the TASKS_ADMIN_RETRY_LIMIT setting). Narrow the "
            "filter, for example by task, or raise the setting.")


# What a bulk retry reads of each original: enough for its conditional transition.
ORIGINAL_FIELDS = ("pk", "result_id", "task_name", "status", "attempts", "status_detail",
                   "gave_up", "finished_at", "timeline", "timeline_omitted", "args", "kwargs",
                   "backend")


def retry_queryset(queryset: Any, user: Any = None, limit: int | None = None,
                   on_retried: Callable[[list[Retried]], None] | None = None) -> RetryReport:
    """Retry every failed, rejected or skipped run in ``queryset``, a chunk at a time.

    Runs a live retry already stands for (READY, RUNNING, SUCCESSFUL, or FAILED with attempts
    left) are skipped and counted (``already_retried``). Refuses the whole selection
    (RetryLimitExceeded, nothing enqueued) when more than ``limit`` runs (default
    TASKS_ADMIN_RETRY_LIMIT) would be retried. Rows are streamed with ``iterator()``; on
    PubSubBackend each chunk's originals are marked and its new runs inserted in one
    transaction, then its messages are published together. ``on_retried`` is called per chunk.
    """
    from .conf import tasks_settings

    if limit is None:
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
    report = RetryReport()
    selection = count_selection(queryset, limit)
    if selection.over_limit:
        raise RetryLimitExceeded(limit_message(limit))
    report.not_retryable = queryset.exclude(status__in=RETRYABLE)[: limit + 1].count()
    report.already_retried = selection.already_retried
    # Only rows that existed when we started: a retry that fails to publish becomes a FAILED
    # row that would otherwise match the filter further along.
    top = TaskExecution.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    # defer(None): the changelist's queryset defers the heavy columns, and only() does not
    # undo a defer(), so args, kwargs and the timeline would be read one query per run.
    rows = (_retryable(queryset).filter(pk__lte=top).order_by("pk").defer(None)
            .only(*ORIGINAL_FIELDS).iterator(chunk_size=CHUNK_SIZE))
    routes: dict[str, tuple[Any, str]] = {}
    for chunk in batched(rows, CHUNK_SIZE):
        done = _retry_chunk(chunk, user, routes, report)
        if on_retried and done:
            on_retried(done)
    return report


def _label(original: TaskExecution) -> str:
    return f"{original.task_name} [{original.status}] {original.result_id}"


def _retry_chunk(chunk: Iterable[TaskExecution], user: Any,
                 routes: dict[str, tuple[Any, str]], report: RetryReport) -> list[Retried]:
    done: list[Retried] = []
    bulk: list[tuple[TaskExecution, Any, Any, str]] = []
    for original in chunk:
        if original.task_name not in routes:
            routes[original.task_name] = route_refusal(original.task_name)
        route, reason = routes[original.task_name]
        if reason:
            report.refused[reason] += 1
            continue
        backend = task_backends[route.task.backend]
        if not isinstance(backend, PubSubBackend):
            one = _retry_one(route, original, _label(original), user, report)
            if one is not None:
                done.append(one)
            continue
        bulk.append((original, route, backend, _label(original)))
    if bulk:
        done.extend(_retry_pubsub(bulk, user, report))
    return done


def _retry_one(route: Any, original: TaskExecution, label: str, user: Any,
               report: RetryReport) -> Retried | None:
    """Other backends (ImmediateBackend runs the task right here) go one enqueue at a time,
    in the transaction that marks the original: a refused enqueue leaves it unmarked."""
    using = router.db_for_write(TaskExecution)
    published = True
    was_live = not original.gave_up
    try:
        with transaction.atomic(using=using):
            if not original.record_retried(using, _retried_sentence(
                    None, user, original.redelivered_by_pubsub),
                    original.redelivered_by_pubsub):
                report.changed += 1
                return None
            with enqueue_context(Trigger.RETRY, original.pk, _note(original.result_id, user)):
                try:
                    route.task.enqueue(*original.args, **original.kwargs)
                except TaskPublishError:
                    published = False
    except InvalidTask as exc:
        report.refused[str(exc)] += 1
        return None
    if was_live and original.gave_up:
        _announce_ended([(original, route)])
    new = TaskExecution.objects.filter(retry_of_id=original.pk).order_by("-pk").values_list(
        "pk", "result_id").first() or (0, "")
    if published:
        report.retried += 1
    else:
        report.publish_failed += 1
    return Retried(original.pk, label, new[0], new[1], published)


def _mark_retried(original: TaskExecution, new_result_id: str, route: Any, user: Any,
                  using: str) -> bool:
    """A retry's transition of its original (record_retried); whether it won."""
    settle = original.redelivered_by_pubsub
    return original.record_retried(using, _retried_sentence(new_result_id, user, settle),
                                   settle)


# How an original is marked as it is retried: (original, new result id, route, user, using)
# → whether its conditional transition won. abandon.py passes its own (record_abandoned).
Mark = Callable[[TaskExecution, str, Any, Any, str], bool]


def _retry_pubsub(bulk: list[tuple[TaskExecution, Any, Any, str]], user: Any,
                  report: RetryReport, mark: Mark = _mark_retried) -> list[Retried]:
    """Mark each original and record its new run in one transaction, then publish the new
    runs' messages as enqueue_many() does (backend.publish_executions): requests of up to
    1,000 messages, all in flight, then awaited; a failed publish marks exactly its run."""
    now = timezone.now()
    using = router.db_for_write(TaskExecution)
    made: list[tuple[TaskExecution, Any, Any, str]] = []
    ended: list[tuple[TaskExecution, Any]] = []
    with transaction.atomic(using=using):
        for original, route, backend, label in bulk:
            execution = TaskExecution(
                task_name=route.name, task_path=route.path, backend=backend.alias,
                args=original.args, kwargs=original.kwargs, enqueued_at=now,
                trigger=Trigger.RETRY, retry_of_id=original.pk,
            )
            execution.task_id = execution.result_id
            was_live = not original.gave_up
            if not mark(original, execution.result_id, route, user, using):
                report.changed += 1  # a delivery, or another retry, changed it meanwhile
                continue
            if was_live and original.gave_up:
                ended.append((original, route))
            execution._log("", State.READY, _note(original.result_id, user))
            made.append((execution, route, backend, label))
        # The rows exist before the publish, like an enqueue's: the delivery must wait for
        # them rather than create one (runner._claim).
        TaskExecution.objects.using(using).bulk_create([item[0] for item in made])
    done = _publish_chunk(made, report)
    _announce_ended(ended)
    return done


def _announce_ended(ended: list[tuple[TaskExecution, Any]]) -> None:
    """Django's task_finished for each original whose retry ended its life: it was still
    redelivered by Pub/Sub (failing, will retry; or RUNNING, given up as lost) and is now
    FAILED for good. An original that had already ended sent it then."""
    from .runner import announce_finished

    if not ended:
        return
    # A bulk retry read only what its transitions need (ORIGINAL_FIELDS); the result Django's
    # signal carries needs the whole row, read here in one query rather than one per field.
    rows = TaskExecution.objects.using(router.db_for_write(TaskExecution)).in_bulk(
        [original.pk for original, _route in ended])
    for original, route in ended:
        announce_finished(rows.get(original.pk, original), route.task)


def _pending(execution: TaskExecution, route: Any) -> Pending:
    message = build_message(execution.task_id, route.name, execution.args, execution.kwargs,
                            execution.enqueued_at)
    pending = Pending(execution, route, route.task, encode_message(message),
                      {"trigger": execution.trigger, RECORDED_ATTRIBUTE: "1",
                       **trace_attributes()})
    pending.result = result_from_execution(execution, route.task)
    return pending


def _publish_chunk(bulk: list[tuple[TaskExecution, Any, Any, str]],
                   report: RetryReport) -> list[Retried]:
    by_backend: dict[str, tuple[PubSubBackend, list[Pending]]] = {}
    labels = {}
    for execution, route, backend, label in bulk:
        by_backend.setdefault(backend.alias, (backend, []))[1].append(_pending(execution, route))
        labels[execution.result_id] = label
    failed: set[str] = set()
    for backend, pendings in by_backend.values():
        for pending in backend.publish_executions(pendings):
            failed.add(pending.execution.result_id)
            logger.error("Publishing retry %s of %s failed: %s", pending.execution.result_id,
                         labels[pending.execution.result_id],
                         pending.execution.errors[-1]["exception_class_path"])
    done = []
    for execution, _route, _backend, label in bulk:
        published = execution.result_id not in failed
        if published:
            report.retried += 1
        else:
            report.publish_failed += 1
        done.append(Retried(execution.retry_of_id or 0, label, execution.pk,
                            execution.result_id, published,
                            not published and execution.status == State.READY))
    return done


# --- Recovering a READY run whose message may never have reached Pub/Sub --------------------

def republish_refusal(execution: TaskExecution) -> str:
    """Why ``execution`` cannot be re-published, or "" if it can: it is READY, no delivery has
    claimed it, and its publish was not confirmed or its ack deadline has passed."""
    if execution.status != State.READY or execution.attempts:
        return ("Only a READY run that no delivery has started can be re-published; this one "
                f"is {State(execution.status).label.lower()} after {execution.attempts} "
                "attempt(s).")
    if execution.task_id != execution.result_id:
        return ("This run was recorded by its delivery, not by an enqueue, so there is no "
                "message of it to publish again.")
    try:
        route = get_route(execution.task_name)
    except (UnknownTask, RegistryError):
        return (f"Task {execution.task_name!r} is not in TASKS_REGISTRY, so it cannot be "
                "re-published; add its TaskRoute back to the registry first.")
    since = execution.enqueued_at or execution.created_at
    stale = timezone.now() - since > timedelta(seconds=route.ack_deadline)
    if execution.status_detail != PUBLISH_UNCONFIRMED and not stale:
        return (f"The run was enqueued less than its ack deadline ({route.ack_deadline} s) "
                "ago and its publish was confirmed; wait for its delivery.")
    return ""


def republish_run(execution: TaskExecution, user: Any = None) -> bool:
    """Publish a READY run's message again; True if Pub/Sub confirmed it.

    Safe even if the first message arrives too: both deliveries claim the same row, so the
    task runs once. Raises RetryRefused when the run cannot be re-published or changed
    meanwhile. A failed publish keeps the run READY "unconfirmed" (the first may still come).
    """
    reason = republish_refusal(execution)
    if reason:
        raise RetryRefused(reason)
    route = get_route(execution.task_name)
    try:
        backend = task_backends[execution.backend]
    except InvalidTaskBackend:
        backend = None
    if not isinstance(backend, PubSubBackend):
        raise RetryRefused(f"The run's backend {execution.backend!r} is not a PubSubBackend, "
                           "so it has no message to publish again; retry it instead.")
    using = router.db_for_write(TaskExecution)
    who = getattr(user, "get_username", lambda: "")() if user is not None else ""
    if not execution.record_republished(using, "published again" + (f" by {who}" if who
                                                                     else "")):
        raise RetryRefused(CHANGED)
    return not backend.publish_executions([_pending(execution, route)], in_doubt=True)



@dataclass
class RepublishReport:
    """What a bulk "Publish again" did: counts, and the runs published (at most the limit),
    for the audit log."""

    republished: int = 0  # published again, confirmed by Pub/Sub
    publish_failed: int = 0  # published again, not confirmed (still READY, unconfirmed)
    changed: int = 0  # changed between the selection and the publish (a delivery), skipped
    refused: Counter = field(default_factory=Counter)  # sentence -> number of runs
    runs: list[tuple[int, str, bool]] = field(default_factory=list)  # pk, repr, confirmed


# What a bulk re-publish reads of each run: its refusal check and its message.
REPUBLISH_FIELDS = ("pk", "result_id", "task_id", "task_name", "status", "attempts",
                    "status_detail", "enqueued_at", "created_at", "backend", "args", "kwargs",
                    "trigger", "timeline", "timeline_omitted", "errors", "errors_omitted")


def republish_queryset(queryset: Any, user: Any = None,
                       limit: int | None = None) -> RepublishReport:
    """Publish again every READY run in ``queryset`` that republish_refusal() allows (what the
    run list's stuck filter shows as "publish not confirmed" or "ready too long"), the
    messages of each backend together. Runs in other states are left out unseen; more than
    ``limit`` (default TASKS_ADMIN_RETRY_LIMIT) READY runs refuse the whole selection
    (RetryLimitExceeded, nothing published)."""
    from .conf import tasks_settings

    if limit is None:
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
    ready = queryset.filter(status=State.READY, attempts=0)
    if ready[: limit + 1].count() > limit:
        raise RetryLimitExceeded(
            f"More than {limit:,} of the selected runs are READY, and one click may publish "
            f"at most {limit:,} again (the TASKS_ADMIN_RETRY_LIMIT setting). Narrow the "
            "filter, for example by task, or raise the setting.")
    report = RepublishReport()
    using = router.db_for_write(TaskExecution)
    who = getattr(user, "get_username", lambda: "")() if user is not None else ""
    note = "published again" + (f" by {who}" if who else "")
    by_backend: dict[str, tuple[PubSubBackend, list[Pending]]] = {}
    for run in ready.order_by("pk").only(*REPUBLISH_FIELDS)[:limit]:
        reason = republish_refusal(run)
        try:
            backend = task_backends[run.backend]
        except InvalidTaskBackend:
            backend = None
        if not reason and not isinstance(backend, PubSubBackend):
            reason = (f"The run's backend {run.backend!r} is not a PubSubBackend, so it has "
                      "no message to publish again.")
        if reason:
            report.refused[reason] += 1
            continue
        assert isinstance(backend, PubSubBackend)
        if not run.record_republished(using, note):
            report.changed += 1
            continue
        pending = _pending(run, get_route(run.task_name))
        by_backend.setdefault(backend.alias, (backend, []))[1].append(pending)
    for backend, pendings in by_backend.values():
        failed = {p.execution.pk for p in backend.publish_executions(pendings, in_doubt=True)}
        report.publish_failed += len(failed)
        report.republished += len(pendings) - len(failed)
        report.runs += [(p.execution.pk, str(p.execution), p.execution.pk not in failed)
                        for p in pendings]
    return report
