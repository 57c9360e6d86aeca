"""PubSubBackend: records each enqueued task, then publishes it to the route's topic."""

import gc
import logging
import sys
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.models import signals
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import clients, traces
from .conf import tasks_settings
from .exceptions import (
    InvalidTaskArguments,
    PublishNotConfirmed,
    TaskPublishError,
    UnknownTask,
)
from .messages import (
    RECORDED_ATTRIBUTE,
    SUSPECT_ESCAPE,
    build_message,
    check_publish_size,
    encode_json,
    encode_message,
    encode_task_message,
    trace_attributes,
)
from .push import text_problem
from .registry import get_route
from .results import new_result, result_from_execution
from .statements import buffer_shared, flush_buffer, held_rows, insert_run
from .task_class import PubSubTask

logger = logging.getLogger("gyrinx_tasks")

KNOWN_OPTIONS = {"project_id", "publish_on_commit", "publish_timeout", "client_options"}
# Options still accepted, with a check warning, because they do nothing now: batch_settings
# configured the client library's batching publish(), which no enqueue, retry or schedule
# path calls (they send their own Publish requests, see clients.publish_now).
DEPRECATED_OPTIONS = {"batch_settings"}
# Rows per bulk_create statement (off PostgreSQL) and per existence check in the
# publish_on_commit flush.
CHUNK_SIZE = 1000
# Messages published together (their requests all in flight) before waiting.
PUBLISH_WINDOW = 10_000
PENDING_ATTR = "gyrinx_tasks_pending"  # runs a connection publishes when it commits
# Tasks a backend remembers as validated (PubSubBackend.validate_task).
VALIDATED_KEPT = 256
# Enqueues in one transaction after which the queue drops hooks that rolled back.
PRUNE_EVERY = 10_000


@dataclass(frozen=True)
class EnqueueContext:
    """Why the enqueues inside enqueue_context() happen, e.g. a retry of an earlier run."""

    trigger: str
    retry_of_id: int | None = None
    note: str = ""


# Read when a run's row is created (here, or in signals.record_enqueued for other backends),
# so a retry is recorded as one in the same write, whatever backend carries it.
_enqueue_context: ContextVar[EnqueueContext | None] = ContextVar(
    "gyrinx_tasks_enqueue_context", default=None
)


@contextmanager
def enqueue_context(trigger: str, retry_of_id: int | None = None,
                    note: str = "") -> Iterator[EnqueueContext]:
    """Record the enqueues made inside this block with ``trigger`` (and ``retry_of``)."""
    context = EnqueueContext(trigger, retry_of_id, note)
    token = _enqueue_context.set(context)
    try:
        yield context
    finally:
        _enqueue_context.reset(token)


def current_enqueue_context() -> EnqueueContext | None:
    return _enqueue_context.get()


def publish_unconfirmed(exc: BaseException) -> bool:
    """Whether a failed publish may still have reached Pub/Sub, rather than having been
    refused: it timed out, or its last error was one the client retries (UNAVAILABLE,
    DEADLINE_EXCEEDED, ...) when the deadline ran out, or a try before it was."""
    from google.api_core import exceptions as api_exceptions

    return isinstance(exc, (TimeoutError, api_exceptions.RetryError, PublishNotConfirmed,
                            *clients.TRANSIENT))


class Pending:
    """A run on its way: the unsaved or saved row, its route, task and message bytes.

    A run enqueued with publish_on_commit is written from its column values
    (_enqueue_on_commit, made with ``unbuilt``): its model instance is built only if it is
    asked for (its publish failed), and the run is its own commit hook. Such a run holds as
    few objects as it can: thousands are kept until their transaction commits, and every
    object kept makes Python's garbage collector slower meanwhile.
    """

    __slots__ = ("__weakref__", "_execution", "_note", "_template", "alias", "attributes",
                 "backend", "data", "enqueued_at", "result", "result_id", "route", "shared",
                 "task", "using")
    # Set only by unbuilt():
    _template: "RunTemplate"
    _note: str
    backend: "PubSubBackend"
    enqueued_at: Any
    using: str

    def __init__(self, execution: Any, route: Any, task: Any, data: bytes,
                 attributes: dict[str, str], result: TaskResult | None = None,
                 shared: tuple | None = None) -> None:
        self._execution = execution
        self.route, self.task, self.data, self.attributes = route, task, data, attributes
        self.result = result
        # Its columns but RUN_VARYING are those of every run with this key
        # (statements.insert_run).
        self.shared = shared
        self.result_id, self.alias = execution.result_id, execution.backend

    @classmethod
    def unbuilt(cls, template: "RunTemplate", backend: "PubSubBackend", using: str, route: Any,
                task: Any, data: bytes, attributes: dict[str, str], result: TaskResult,
                shared: tuple, note: str) -> "Pending":
        """A run written on ``using`` from ``template`` and its TaskResult's values."""
        pending = cls.__new__(cls)
        pending._execution, pending._template, pending._note = None, template, note
        pending.route, pending.task, pending.data = route, task, data
        pending.attributes, pending.result, pending.shared = attributes, result, shared
        pending.result_id, pending.alias, pending.enqueued_at = (
            result.id, backend.alias, result.enqueued_at)
        pending.backend, pending.using = backend, using
        return pending

    @property
    def execution(self) -> Any:
        if self._execution is None:
            result = self.result
            assert result is not None
            self._execution = self._template.run(
                self.enqueued_at, result.args, result.kwargs, self.result_id,
                first_timeline(self.enqueued_at, self._note), self.using)
        return self._execution

    def published(self, message_id: str) -> None:
        if self._execution is not None:  # not written: the delivery records it
            self._execution.message_id = message_id

    # As its own commit hook (see PubSubBackend._publish_on_commit).
    @property
    def pendings(self) -> list["Pending"]:
        return [self]

    def __call__(self) -> None:
        self.backend._flush_pending(self.using)


def first_timeline(now: Any, note: str) -> list[dict[str, str]]:
    """The timeline of a run just enqueued (as TaskExecution._log writes it)."""
    return [{"at": now.isoformat(), "from": "", "to": "READY", "note": note}]


class _CommitHook:
    """The on_commit callback of one enqueue: publishes the connection's pending runs."""

    __slots__ = ("__weakref__", "backend", "pendings", "using")

    def __init__(self, backend: "PubSubBackend", using: str, pendings: list[Pending]) -> None:
        self.backend, self.using, self.pendings = backend, using, pendings

    def __call__(self) -> None:
        self.backend._flush_pending(self.using)


# The columns that differ between runs enqueued the same way (same task, backend, queue and
# trigger): set for each run; every other column is copied from the first run's.
RUN_VARYING = ("result_id", "task_id", "args", "kwargs", "created_at", "enqueued_at",
               "timeline")


@dataclass(frozen=True)
class RunTemplate:
    """The column values of a new run, to build the next runs enqueued the same way from."""

    names: list[str]
    values: list[Any]
    varying: dict[str, int]  # RUN_VARYING's positions in ``values``
    mutable: list[int]  # lists and dicts: each run gets its own copy

    @classmethod
    def of(cls, execution: Any) -> "RunTemplate":
        names = [field.attname for field in type(execution)._meta.concrete_fields]
        values = [getattr(execution, name) for name in names]
        return cls(names, values, {name: names.index(name) for name in RUN_VARYING},
                   [i for i, value in enumerate(values) if isinstance(value, (list, dict))])

    def run(self, now: Any, args: Any, kwargs: Any, result_id: str = "",
            timeline: list | None = None, using: str | None = None) -> Any:
        """A new run with these values (unsaved; or, with ``using``, as written there)."""
        from .models import TaskExecution, new_result_id

        values = list(self.values)
        for index in self.mutable:
            values[index] = type(values[index])(values[index])
        result_id = result_id or new_result_id()
        varying = self.varying
        values[varying["result_id"]] = values[varying["task_id"]] = result_id
        values[varying["args"]], values[varying["kwargs"]] = args, kwargs
        values[varying["created_at"]] = values[varying["enqueued_at"]] = now
        values[varying["timeline"]] = list(timeline or [])
        execution = TaskExecution.from_db(using, self.names, values)
        execution._state.adding = using is None  # not saved yet
        if using is not None:
            execution.remember_progress()  # the state its transitions expect
        return execution


# By (task name, path, backend alias, queue name, trigger, retry_of_id): at most one per
# routed task, backend, queue and trigger (retries, each with its own key, are not kept).
_templates: dict[tuple, RunTemplate] = {}

# Values normalize_json returns as they are.
_PLAIN = frozenset({int, float, str, bool, type(None)})


def _json_value(value: list | dict) -> Any:
    """normalize_json(value), without its walk for a flat list, or a dict with text keys, of
    plain values."""
    if type(value) is dict:
        if all(type(key) is str for key in value) and all(
                type(item) in _PLAIN for item in value.values()):
            return value
    elif all(type(item) in _PLAIN for item in value):
        return value
    return normalize_json(value)


def _model_signals() -> bool:
    """Whether pre_save or post_save has receivers for TaskExecution."""
    model = _runs_model()
    return signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model)


@cache
def _runs_model() -> Any:
    from .models import TaskExecution

    return TaskExecution


def _backend(alias: str) -> "PubSubBackend":
    from django.tasks import task_backends

    return task_backends[alias]  # type: ignore[return-value]


# The columns that differ between the runs of one enqueue_many() call.
VARYING = ("result_id", "task_id", "args", "kwargs")


def insert_runs(using: str, executions: list[Any]) -> None:
    """Insert new runs of one task, made together (same trigger, time and timeline).

    On PostgreSQL with psycopg 3 the rows go in with COPY, and every column but VARYING is
    prepared once: bulk_create compiles each of ~25 values per row, which profiling showed
    was most of enqueue_many's time. The runs get no primary key here; _mark_failed finds
    them by result_id. Elsewhere, bulk_create.
    """
    if not executions:
        return
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    model, connection = type(executions[0]), connections[using]
    if connection.vendor != "postgresql" or not is_psycopg3:
        model.objects.using(using).bulk_create(executions, batch_size=CHUNK_SIZE)
        return
    first = executions[0]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    shared = {f.attname: f.get_db_prep_save(getattr(first, f.attname), connection)
              for f in fields if f.attname not in VARYING}
    varying = [(i, f) for i, f in enumerate(fields) if f.attname in VARYING]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    template = [shared.get(f.attname) for f in fields]
    with connection.cursor() as cursor, cursor.copy(  # type: ignore[attr-defined]
            f"COPY {connection.ops.quote_name(model._meta.db_table)} ({columns}) FROM STDIN"
    ) as copy:
        for execution in executions:
            # The in-memory runs match their rows.
            execution.created_at, execution.timeline = first.created_at, first.timeline
            row = list(template)
            for index, field in varying:
                row[index] = field.get_db_prep_save(getattr(execution, field.attname),
                                                    connection)
            copy.write_row(row)


def enqueue_many(task: Any, calls: Iterable[tuple[Any, Any]]) -> list[TaskResult]:
    """Enqueue ``task`` for each ``(args, kwargs)``: in bulk on PubSubBackend, else one by one.

    See PubSubBackend.enqueue_many.
    """
    backend = task.get_backend()
    if isinstance(backend, PubSubBackend):
        return backend.enqueue_many(task, calls)
    return [task.enqueue(*args, **kwargs) for args, kwargs in calls]


class PubSubBackend(BaseTaskBackend):
    task_class = PubSubTask  # @task(max_attempts=...) on this backend
    supports_defer = False  # would need Pub/Sub scheduled delivery
    supports_async_task = False  # the push endpoint runs tasks synchronously
    supports_get_result = True  # results are stored in TaskExecution
    supports_priority = False  # one topic per task, no priority ordering

    @property
    def project_id(self) -> str:
        return str(self.options.get("project_id") or tasks_settings.GCP_PROJECT_ID)

    @property
    def publish_on_commit(self) -> bool:
        return bool(self.options.get("publish_on_commit", False))

    @property
    def publish_timeout(self) -> float:
        return float(self.options.get("publish_timeout", 30))

    @cached_property
    def publisher(self) -> Any:
        # Shared by every backend instance (Django makes one per thread) with these options.
        return clients.shared_publisher(self.options.get("client_options"))

    def topic_path(self, topic_name: str) -> str:
        return f"projects/{self.project_id}/topics/{topic_name}"

    def _route_for(self, task: Any) -> Any:
        # Only routed tasks have a topic. Checked at enqueue, not in validate_task(): that runs
        # at decoration time, while the registry module is still importing the tasks.
        try:
            route = get_route(task.name)
        except UnknownTask as exc:
            raise InvalidTask(
                f"Task {task.module_path!r} is not listed in TASKS_REGISTRY; add "
                f"TaskRoute({task.name}) to the registry so it has a Pub/Sub topic."
            ) from exc
        if route.path != task.module_path:
            raise InvalidTask(
                f"The registry's route {route.name!r} is {route.path!r}, not "
                f"{task.module_path!r}. Task names must be unique across the registry."
            )
        return route

    def publish(self, topic_name: str, message: dict[str, Any], **attributes: str) -> str:
        """Publish one JSON message (with string attributes) and wait for its message id.

        One request, no batch timer: see clients.publish_now.
        """
        return clients.publish_now(self.publisher, self.topic_path(topic_name),
                                   encode_message(message), attributes, self.publish_timeout)

    def _prepare(self, task: Any, route: Any, args: Any, kwargs: Any, now: Any,
                 context: EnqueueContext | None) -> "Pending":
        """An unsaved run and its message, size-checked (nothing is recorded if too large)."""
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        execution, shared = self._new_run(task, route, args, kwargs, now, context)
        message = build_message(execution.task_id, route.name, args, kwargs, now)
        # The runner reads the trigger attribute if it has to create the row itself.
        attributes = {"trigger": context.trigger} if context else {}
        # The row is recorded before the publish: a delivery finding no row waits for the
        # enqueue's commit instead of creating it (runner._claim), and a rolled-back enqueue
        # is never run.
        attributes[RECORDED_ATTRIBUTE] = "1"
        attributes.update(trace_attributes())  # the run joins the caller's trace
        # Refused before anything is published or recorded: values JSON (or the database)
        # cannot carry would publish a message whose row then fails to insert, or a row
        # whose delivery can never run. The message's own encoding finds them: NaN and
        # Infinity fail it (ValueError), and NUL or a lone surrogate can only appear as a
        # \u escape (_check_data).
        try:
            data = encode_message(message)
        except ValueError:
            data = b""
        self._check_data(route, data, args, kwargs, attributes)
        execution._log("", execution.status, (context and context.note) or "enqueued")
        return Pending(execution, route, task, data, attributes, shared=shared)

    def _check_data(self, route: Any, data: bytes, args: Any, kwargs: Any,
                    attributes: dict[str, str]) -> None:
        """Raise InvalidTaskArguments or MessageTooLarge for a message that could never run
        (``data`` empty: its encoding failed)."""
        if not data or SUSPECT_ESCAPE.search(data):
            problem = text_problem({"args": args, "kwargs": kwargs})
            if problem:
                raise InvalidTaskArguments(
                    f"Task {route.path!r} was not enqueued: the JSON of its arguments "
                    f"{problem} Pass finite numbers, and text without NUL characters or "
                    "unpaired surrogates.")
        # Refused before anything is recorded: a message Pub/Sub would refuse can never run.
        check_publish_size(route.name, self.topic_path(route.topic_name), data, attributes)

    def _new_run(self, task: Any, route: Any, args: Any, kwargs: Any, now: Any,
                 context: EnqueueContext | None) -> tuple[Any, tuple | None]:
        """An unsaved run of ``task`` with these arguments, its timeline still empty, and the
        key its other columns share with every run enqueued the same way (None for a retry).

        Every run of one task enqueued the same way holds the same values in all columns but
        RUN_VARYING, so the model is built once per such way (RunTemplate) and each run
        from its values: Model.__init__ with keywords costs far more than Model.from_db.
        """
        from .models import TaskExecution, Trigger

        trigger = context.trigger if context else Trigger.ENQUEUE
        retry_of_id = context.retry_of_id if context else None
        key = (route.name, route.path, self.alias, task.queue_name, trigger, retry_of_id)
        template = _templates.get(key)
        if template is None:
            execution = TaskExecution(
                task_name=route.name, task_path=route.path, backend=self.alias,
                args=args, kwargs=kwargs, enqueued_at=now, queue_name=task.queue_name,
                trigger=trigger, retry_of_id=retry_of_id,
            )
            execution.task_id = execution.result_id
            if retry_of_id is not None:  # a retry's key is its own: not worth keeping
                return execution, None
            _templates[key] = RunTemplate.of(execution)
            return execution, key
        return template.run(now, args, kwargs), key

    def validate_task(self, task: Any) -> None:
        # Tasks are immutable and enqueued over and over: each is validated once (kept by
        # identity, a few hundred at most).
        validated = self.__dict__.setdefault("_validated", {})
        if validated.get(id(task)) is task:
            return
        super().validate_task(task)
        if len(validated) >= VALIDATED_KEPT:
            validated.clear()
        validated[id(task)] = task

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        route = self._route_for(task)
        if traces.tracer() is None:
            # No span to make: the message carries the caller's trace as it is
            # (trace_attributes), as it would inside publish_span.
            return self._enqueue(task, route, args, kwargs)
        with traces.publish_span(route.name, self.topic_path(route.topic_name)):
            return self._enqueue(task, route, args, kwargs)

    def _enqueue(self, task: Any, route: Any, args: Any, kwargs: Any) -> TaskResult:
        context = current_enqueue_context()
        if self.publish_on_commit:
            result = self._enqueue_on_commit(task, route, args, kwargs, context)
            if result is not None:
                return result
        pending = self._prepare(task, route, args, kwargs, timezone.now(), context)
        using = router.db_for_write(type(pending.execution), instance=pending.execution)
        if self.publish_on_commit and connections[using].in_atomic_block:
            insert_run(using, pending.execution, pending.shared, RUN_VARYING)
            pending.result = self.result_from_execution(pending.execution, task=task)
            self._publish_on_commit(using, [pending])
            return pending.result
        # The request to Pub/Sub is sent first and the row inserted while it is in flight:
        # the two round trips overlap instead of adding up (docs/performance.md). Deliveries
        # still never run without the row: the message says the run is recorded, and a
        # delivery that finds no row answers busy until it appears (runner._claim). If the
        # insert fails, the enqueue raises and the message, already sent, is never run: its
        # deliveries answer busy and, an hour after enqueued_at, are rejected as rolled back.
        # The only write of a successful enqueue: the delivery records the message id.
        wait = clients.start_publish(self.publisher, self.topic_path(route.topic_name),
                                     pending.data, pending.attributes, self.publish_timeout)
        insert_run(using, pending.execution, pending.shared, RUN_VARYING)
        pending.result = self.result_from_execution(pending.execution, task=task)
        self._publish_execution(pending, wait)
        return pending.result

    def _enqueue_on_commit(self, task: Any, route: Any, args: Any, kwargs: Any,
                           context: EnqueueContext | None) -> TaskResult | None:
        """enqueue() inside a transaction with publish_on_commit, written from the run's
        column values; None (nothing done) where the general path is needed.

        Many enqueues in one transaction are this option's purpose, and there the run's
        model instance, its TaskResult built from it, and the INSERT's RETURNING were most
        of the Python time per call (docs/performance.md). So the row is made from the
        values that differ between runs (with the other columns' values the first such run
        cached on the connection) and held on the connection, to be written with the
        transaction's other runs in one statement before the connection's next statement or
        its COMMIT (statements.buffer_shared); the TaskResult is made from the same values,
        and the instance is built only if its publish fails (Pending.execution). Not taken:
        for a retry (its own key), while model signals on TaskExecution have receivers (they
        need the instance), with database routers (they may route by the instance), and
        outside a transaction.
        """
        if (context is not None and context.retry_of_id is not None) or _model_signals():
            return None
        if settings.DATABASE_ROUTERS:
            return None
        # What the router answers when no router is configured.
        connection = connections[DEFAULT_DB_ALIAS]
        if not connection.in_atomic_block:
            return None
        key = (route.name, route.path, self.alias, task.queue_name,
               context.trigger if context else "enqueue", None)
        template = _templates.get(key)
        if template is None:
            return None  # the first run of this kind makes the template
        now = timezone.now()
        args, kwargs = _json_value(list(args)), _json_value(dict(kwargs))
        result_id = str(uuid.uuid4())  # models.new_result_id
        attributes = {"trigger": context.trigger} if context else {}
        attributes[RECORDED_ATTRIBUTE] = "1"
        attributes.update(trace_attributes())
        # Each value is encoded once, for the message and (on PostgreSQL) the row.
        try:
            args_json = encode_json(args)
            kwargs_json = encode_json(kwargs) if kwargs else "{}"
        except ValueError:
            data = b""
        else:
            data = encode_task_message(result_id, route.name, args_json, kwargs_json, now)
        self._check_data(route, data, args, kwargs, attributes)
        if not data:
            return None
        note = (context and context.note) or "enqueued"
        if not buffer_shared(connection, key, {
                "result_id": result_id, "task_id": result_id, "args": args, "kwargs": kwargs,
                "created_at": now, "enqueued_at": now, "timeline": first_timeline(now, note)},
                {"args": args_json, "kwargs": kwargs_json,
                 "timeline": encode_json(first_timeline(now, note))}):
            return None  # this connection has not written a run of this kind yet
        # The row is held, and written with the others before the connection's next
        # statement or its COMMIT (statements.buffer_shared).
        result = new_result(task, result_id, now, args, kwargs, self.alias)
        pending = Pending.unbuilt(template, self, DEFAULT_DB_ALIAS, route, task, data,
                                  attributes, result, key, note)
        self._publish_on_commit(DEFAULT_DB_ALIAS, pending, connection)
        return result

    def enqueue_many(self, task: Any, calls: Iterable[tuple[Any, Any]]) -> list[TaskResult]:
        """Enqueue ``task`` once per ``(args, kwargs)`` in ``calls``: the rows inserted in one
        transaction (insert_runs: COPY on PostgreSQL, else bulk_create), then the messages
        published together (publish_executions).

        Every message is checked before anything is recorded. With ``publish_on_commit``
        inside a transaction, publishing waits for the commit, as for enqueue(). Raises
        TaskPublishError naming the runs whose publish failed (recorded FAILED); the others
        are published and READY.
        """
        self.validate_task(task)
        route = self._route_for(task)
        calls = list(calls)
        with traces.publish_span(route.name, self.topic_path(route.topic_name), len(calls)):
            return self._enqueue_many(task, route, calls)

    def _enqueue_many(self, task: Any, route: Any,
                      calls: list[tuple[Any, Any]]) -> list[TaskResult]:
        from .models import TaskExecution

        now, context = timezone.now(), current_enqueue_context()
        pendings = [self._prepare(task, route, args, kwargs, now, context)
                    for args, kwargs in calls]
        using = router.db_for_write(TaskExecution)
        with transaction.atomic(using=using):  # all the rows, or none
            insert_runs(using, [p.execution for p in pendings])
        for pending in pendings:
            pending.result = self.result_from_execution(pending.execution, task=task)
        if self.publish_on_commit and connections[using].in_atomic_block:
            self._publish_on_commit(using, pendings)
        else:
            self._raise_for(self.publish_executions(pendings))
        return [p.result for p in pendings if p.result is not None]

    def _publish_execution(self, pending: "Pending",
                           wait: Callable[[], str] | None = None) -> None:
        """Publish a saved run's message (or wait for ``wait``, its publish already sent)."""
        execution, route = pending.execution, pending.route
        try:
            if wait is None:
                wait = clients.start_publish(
                    self.publisher, self.topic_path(route.topic_name), pending.data,
                    pending.attributes, self.publish_timeout)
            message_id = wait()
        except Exception as exc:
            if not self._mark_failed(pending, exc):
                task_enqueued.send(type(self), task_result=pending.result)
                return
            raise TaskPublishError(
                f"Could not publish task {route.path!r} to topic "
                f"{self.topic_path(route.topic_name)!r}: {exc}. The run "
                f"{execution.result_id} is recorded as "
                + ("READY, publish unconfirmed: it runs if Pub/Sub delivers it after all."
                   if execution.status == "READY" else "FAILED.")
            ) from exc
        # Not written: the delivery records it (runner._claim), saving a query per enqueue.
        execution.message_id = message_id
        task_enqueued.send(type(self), task_result=pending.result)

    def _mark_failed(self, pending: "Pending", exc: BaseException,
                     in_doubt: bool = False) -> bool:
        """Record a failed publish on its run; False if a delivery had already recorded the
        run, which means Pub/Sub had the message after all (then the run is left as it is).

        ``in_doubt``: an earlier publish of the message may have reached Pub/Sub (a re-publish
        from the admin), so the run stays READY whatever the error."""
        execution = pending.execution
        # On the database the run was written to (a read replica may not have it yet).
        using = execution._state.db or router.db_for_write(type(execution), instance=execution)
        path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        unconfirmed = in_doubt or publish_unconfirmed(exc)
        trace = "".join(traceback.format_exception(exc))
        if not execution.record_publish_failure(using, path, trace, unconfirmed):
            logger.warning(
                "Publishing task %s (%s) reported %s, but a delivery has already recorded the "
                "run: Pub/Sub had the message, so the run is left as the delivery recorded it.",
                pending.route.path, execution.result_id, path)
            return False
        if unconfirmed:
            # Pub/Sub may have the message and deliver it: the run stays READY, marked
            # unconfirmed, and the delivery (if any) starts it as usual.
            logger.error("Publishing task %s (%s) was not confirmed in time: %s",
                         pending.route.path, execution.result_id, exc)
        else:
            logger.error("Publishing task %s (%s) failed: %s", pending.route.path,
                         execution.result_id, exc)
        if pending.result is not None:
            if execution.status != "READY":
                object.__setattr__(pending.result, "status", TaskResultStatus.FAILED)
            pending.result.errors.append(TaskError(
                exception_class_path=execution.errors[-1]["exception_class_path"],
                traceback=execution.errors[-1]["traceback"],
            ))
        return True

    def publish_executions(self, pendings: list["Pending"],
                           in_doubt: bool = False) -> list["Pending"]:
        """Publish saved runs' messages together, PUBLISH_WINDOW at a time (see
        clients.publish_many: requests of up to 1,000 messages, all in flight, then awaited).
        Returns the runs whose publish failed, each recorded FAILED or READY "unconfirmed"
        (exactly those; see _mark_failed for ``in_doubt``); the others get task_enqueued.
        """
        failed = []
        for start in range(0, len(pendings), PUBLISH_WINDOW):
            by_topic: dict[str, list[Pending]] = {}
            for pending in pendings[start:start + PUBLISH_WINDOW]:
                by_topic.setdefault(pending.route.topic_name, []).append(pending)
            for topic_name, runs in by_topic.items():
                outcomes = clients.publish_many(
                    self.publisher, self.topic_path(topic_name),
                    [(p.data, p.attributes) for p in runs], self.publish_timeout)
                for pending, outcome in zip(runs, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        if self._mark_failed(pending, outcome, in_doubt):
                            failed.append(pending)
                        elif pending.result is not None:
                            task_enqueued.send(type(self), task_result=pending.result)
                    else:
                        pending.published(outcome)
                        if pending.result is not None:
                            task_enqueued.send(type(self), task_result=pending.result)
        return failed

    def _raise_for(self, failed: list["Pending"]) -> None:
        if failed:
            raise TaskPublishError(self._failure_message(failed))

    def _failure_message(self, failed: list["Pending"]) -> str:
        ids = ", ".join(p.result_id for p in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        first = failed[0]
        error = first.execution.errors[-1]["exception_class_path"]
        unconfirmed = sum(1 for p in failed if p.execution.status == "READY")
        state = (f"FAILED, or READY with the publish unconfirmed ({unconfirmed}; Pub/Sub "
                 "may have them, and they run if it delivers them)"
                 if unconfirmed else "FAILED")
        return (f"Could not publish {len(failed)} run(s), the first of {first.route.path!r} to "
                f"{self.topic_path(first.route.topic_name)!r} ({error}); they are recorded as "
                f"{state}: {ids}{more}.")

    def _publish_on_commit(self, using: str, pendings: "list[Pending] | Pending",
                           connection: Any = None) -> None:
        """Publish these runs when the transaction commits, together with every other run
        enqueued in it: the first commit hook to run publishes them all and waits once.

        Each enqueue registers its own hook (its run, or a _CommitHook holding its runs), so
        Django drops it with a rolled-back savepoint or transaction, as on_commit()
        documents. The queue on the connection holds only weak references to the hooks: a
        dropped hook is gone by the time the transaction commits (CPython frees it when
        Django lets go of it), so the flush publishes exactly the runs whose hooks Django
        kept, with no query to find which rows committed.
        """
        connection = connection or connections[using]
        # Kept on the connection: Django gives each thread (and async context) its own.
        queue = getattr(connection, PENDING_ATTR, None)
        if queue is None:
            queue = []
            setattr(connection, PENDING_ATTR, queue)
        elif len(queue) % PRUNE_EVERY == 0 and queue:
            # Hooks of transactions that rolled back, never flushed: let them go.
            queue[:] = [ref for ref in queue if ref() is not None]
        # One run is its own hook (Pending.__call__): fewer objects kept per enqueue.
        hook = pendings if isinstance(pendings, Pending) else _CommitHook(self, using, pendings)
        queue.append(weakref.ref(hook))
        # robust: the transaction has committed, so nothing here may fail the caller (its
        # request would answer 500 after its work was done) or stop the on_commit callbacks
        # registered after this one (an e-mail confirming the order). A failed publish is
        # recorded on its runs and logged instead (_flush_pending).
        transaction.on_commit(hook, using=using, robust=True)

    def _flush_pending(self, using: str) -> None:
        connection = connections[using]
        if connection.in_atomic_block and held_rows(connection):
            # Commit hooks run inside a transaction: TestCase.captureOnCommitCallbacks().
            flush_buffer(connection)
        queue = getattr(connection, PENDING_ATTR, None) or []
        if not queue:
            return  # an earlier hook of this commit published them
        setattr(connection, PENDING_ATTR, [])
        if sys.implementation.name != "cpython":
            gc.collect()  # frees the hooks Django dropped (CPython does as it drops them)
        # Runs of other PubSubBackend aliases publish through their own backend.
        by_backend: dict[str, list[Pending]] = {}
        for ref in queue:
            hook = ref()
            if hook is None:
                continue  # dropped with a rolled-back savepoint or transaction
            for pending in hook.pendings:
                by_backend.setdefault(pending.alias, []).append(pending)
        failed = []
        for alias, runs in by_backend.items():
            backend = self if alias == self.alias else _backend(alias)
            failed += backend.publish_executions(runs)
        if failed:
            # Not raised: the caller's transaction has committed (see _publish_on_commit).
            logger.error("%s", self._failure_message(failed))

    def result_from_execution(self, execution: Any, task: Any = None) -> TaskResult:
        return result_from_execution(execution, task or self._task_for_execution(execution))

    def _task_for_execution(self, execution: Any) -> Any:
        try:
            return get_route(execution.task_name).task
        except UnknownTask:
            return import_string(execution.task_path)

    def get_result(self, result_id: str) -> TaskResult:
        from .models import TaskExecution

        try:
            execution = TaskExecution.objects.get(result_id=result_id)
        except TaskExecution.DoesNotExist as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        # The task as it was enqueued (its queue_name, see result_from_execution), on this
        # backend: refresh() on the result fetches through the backend that fetched it.
        task = self._task_for_execution(execution)
        if task.backend != self.alias:
            task = task.using(backend=self.alias)
        return self.result_from_execution(execution, task)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        for name in sorted(DEPRECATED_OPTIONS & set(self.options)):
            messages.append(checks.Warning(
                f"TASKS[{self.alias!r}]['OPTIONS'][{name!r}] is deprecated and has no effect: "
                "every publish sends its own Pub/Sub request, so there is no client batching "
                "to configure.",
                hint=f"Remove {name!r} from the backend's OPTIONS.",
                id="gyrinx_tasks.W016",
            ))
        unknown = sorted(set(self.options) - KNOWN_OPTIONS - DEPRECATED_OPTIONS)
        if unknown:
            messages.append(checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS'] has unknown keys: {', '.join(unknown)}.",
                hint=f"Known options are: {', '.join(sorted(KNOWN_OPTIONS))}.",
                id="gyrinx_tasks.E012",
            ))
        return messages
