"""Retry runs: each retry is a NEW run (trigger ``retry``, ``retry_of`` the original).

The new run goes through the task's own backend, so a retry works on PubSubBackend and on
Django's ImmediateBackend alike; the original run is left as it was. The admin's Retry
button, its bulk action and the tests all call these functions.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import batched
from typing import Any, NamedTuple

from django.db import router
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from .backend import (
    Pending,
    PubSubBackend,
    build_message,
    encode_message,
    enqueue_context,
    result_from_execution,
)
from .exceptions import RegistryError, TaskPublishError, UnknownTask
from .models import State, TaskExecution, Trigger
from .registry import get_route
from .runner import RECORDED_ATTRIBUTE, kill_switch_reason

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


def retry_run(execution: TaskExecution, user: Any = None) -> TaskExecution:
    """Enqueue a new run of ``execution``'s task with the same arguments, and return it.

    Raises RetryRefused (nothing enqueued) or RetryPublishFailed (a FAILED new run).
    """
    reason = not_retryable_reason(execution.status)
    route = None
    if not reason:
        route, reason = route_refusal(execution.task_name)
    if reason:
        raise RetryRefused(reason)
    assert route is not None
    with enqueue_context(Trigger.RETRY, execution.pk, _note(execution.result_id, user)):
        try:
            result = route.task.enqueue(*execution.args, **execution.kwargs)
        except InvalidTask as exc:
            raise RetryRefused(str(exc)) from exc
        except TaskPublishError as exc:
            failed = execution.retries.order_by("-pk").first()
            raise RetryPublishFailed(str(exc), failed) from exc
    return TaskExecution.objects.get(result_id=result.id)


class Retried(NamedTuple):
    """One run a bulk retry made: the original and its new run."""

    original_id: int
    original_repr: str
    new_id: int
    new_result_id: str
    published: bool


@dataclass
class RetryReport:
    """What a bulk retry did. Counts only: it never holds the rows themselves."""

    retried: int = 0  # new runs enqueued
    publish_failed: int = 0  # new runs recorded FAILED because publishing failed
    not_retryable: int = 0  # selected runs in other states, left alone (counted to limit + 1)
    refused: Counter = field(default_factory=Counter)  # sentence -> number of runs


@dataclass(frozen=True)
class Selection:
    """How many runs a selection holds, counted no further than ``limit`` + 1."""

    total: int
    retryable: int
    limit: int

    @property
    def over_limit(self) -> bool:
        return self.retryable > self.limit


def count_selection(queryset: Any, limit: int) -> Selection:
    """Count the selection cheaply: LIMIT-ed counts, so a million rows are not scanned."""
    return Selection(
        total=queryset[: limit + 1].count(),
        retryable=queryset.filter(status__in=RETRYABLE)[: limit + 1].count(),
        limit=limit,
    )


def limit_message(limit: int) -> str:
    return (f"More than {limit:,} of the selected runs can be retried, and one click may "
            f"retry at most {limit:,} (the TASKS_ADMIN_RETRY_LIMIT setting). Narrow the "
            "filter, for example by task, or raise the setting.")


def retry_queryset(queryset: Any, user: Any = None, limit: int | None = None,
                   on_retried: Callable[[list[Retried]], None] | None = None) -> RetryReport:
    """Retry every failed, rejected or skipped run in ``queryset``, a chunk at a time.

    Refuses the whole selection (RetryLimitExceeded, nothing enqueued) when more than
    ``limit`` runs (default TASKS_ADMIN_RETRY_LIMIT) would be retried. Rows are streamed
    with ``iterator()``; on PubSubBackend each chunk is inserted with one ``bulk_create``
    and its messages are published together. ``on_retried`` is called per chunk.
    """
    from .conf import tasks_settings

    if limit is None:
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
    report = RetryReport()
    selection = count_selection(queryset, limit)
    if selection.over_limit:
        raise RetryLimitExceeded(limit_message(limit))
    report.not_retryable = queryset.exclude(status__in=RETRYABLE)[: limit + 1].count()
    # Only rows that existed when we started: a retry that fails to publish becomes a FAILED
    # row that would otherwise match the filter further along.
    top = TaskExecution.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    rows = (queryset.filter(status__in=RETRYABLE, pk__lte=top).order_by("pk")
            .values_list("pk", "result_id", "task_name", "status", "args", "kwargs")
            .iterator(chunk_size=CHUNK_SIZE))
    routes: dict[str, tuple[Any, str]] = {}
    for chunk in batched(rows, CHUNK_SIZE):
        done = _retry_chunk(chunk, user, routes, report)
        if on_retried and done:
            on_retried(done)
    return report


def _retry_chunk(chunk: Iterable[tuple], user: Any, routes: dict[str, tuple[Any, str]],
                 report: RetryReport) -> list[Retried]:
    now = timezone.now()
    done: list[Retried] = []
    bulk: list[tuple[TaskExecution, Any, Any, str]] = []
    for pk, result_id, task_name, status, args, kwargs in chunk:
        if task_name not in routes:
            routes[task_name] = route_refusal(task_name)
        route, reason = routes[task_name]
        if reason:
            report.refused[reason] += 1
            continue
        label = f"{task_name} [{status}] {result_id}"
        backend = task_backends[route.task.backend]
        if not isinstance(backend, PubSubBackend):
            done.append(_retry_one(route, pk, label, result_id, args, kwargs, user, report))
            continue
        execution = TaskExecution(
            task_name=route.name, task_path=route.path, backend=backend.alias, args=args,
            kwargs=kwargs, enqueued_at=now, trigger=Trigger.RETRY, retry_of_id=pk,
        )
        execution.task_id = execution.result_id
        execution._log("", State.READY, _note(result_id, user))
        bulk.append((execution, route, backend, label))
    if bulk:
        TaskExecution.objects.using(router.db_for_write(TaskExecution)).bulk_create(
            [item[0] for item in bulk])
        done.extend(_publish_chunk(bulk, report))
    return done


def _retry_one(route: Any, pk: int, label: str, result_id: str, args: list, kwargs: dict,
               user: Any, report: RetryReport) -> Retried:
    # Other backends (ImmediateBackend runs the task right here) go one enqueue at a time.
    published = True
    with enqueue_context(Trigger.RETRY, pk, _note(result_id, user)):
        try:
            result_id = route.task.enqueue(*args, **kwargs).id
        except TaskPublishError:
            published = False
    new = TaskExecution.objects.filter(retry_of_id=pk).order_by("-pk").values_list(
        "pk", "result_id").first() or (0, "")
    if published:
        report.retried += 1
    else:
        report.publish_failed += 1
    return Retried(pk, label, new[0], new[1], published)


def _publish_chunk(bulk: list[tuple[TaskExecution, Any, Any, str]],
                   report: RetryReport) -> list[Retried]:
    """Publish the chunk's messages as enqueue_many() does (backend.publish_executions):
    requests of up to 1,000 messages, all in flight, then awaited; a failed publish marks
    exactly its run (FAILED, or READY and unconfirmed after a timeout)."""
    by_backend: dict[str, tuple[PubSubBackend, list[Pending]]] = {}
    labels = {}
    for execution, route, backend, label in bulk:
        message = build_message(execution.task_id, route.name, execution.args,
                                execution.kwargs, execution.enqueued_at)
        # The rows exist before the publish, like an enqueue's: the delivery must wait for
        # them rather than create one (runner._claim).
        pending = Pending(execution, route, route.task, encode_message(message),
                          {"trigger": Trigger.RETRY.value, RECORDED_ATTRIBUTE: "1"})
        pending.result = result_from_execution(execution, route.task)
        by_backend.setdefault(backend.alias, (backend, []))[1].append(pending)
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
                            execution.result_id, published))
    return done
