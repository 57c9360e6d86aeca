"""PubSubBackend: records each enqueued task, then publishes it to the route's topic."""

import json
import logging
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

from django.core import checks
from django.db import transaction
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import clients
from .conf import tasks_settings
from .exceptions import TaskPublishError, UnknownTask
from .push import check_publish_size
from .registry import get_route

logger = logging.getLogger("gyrinx_tasks")

KNOWN_OPTIONS = {"project_id", "publish_on_commit", "publish_timeout", "client_options"}


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


def encode_message(message: dict[str, Any]) -> bytes:
    """A task message's bytes as published."""
    return json.dumps(message, separators=(",", ":")).encode()


def build_message(task_id: str, task_name: str, args: Any, kwargs: Any,
                  enqueued_at: Any = None) -> dict[str, Any]:
    """The JSON message a task travels as. Scheduled messages carry no enqueued_at."""
    message: dict[str, Any] = {
        "task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": dict(kwargs),
    }
    if enqueued_at is not None:
        message["enqueued_at"] = enqueued_at.isoformat()
    return message


def result_from_execution(execution: Any, task: Any) -> TaskResult:
    """A Django TaskResult reflecting a stored TaskExecution."""
    errors = [
        TaskError(exception_class_path=e["exception_class_path"], traceback=e["traceback"])
        for e in execution.errors
    ]
    result: TaskResult = TaskResult(
        task=task, id=execution.result_id, status=execution.django_status,
        enqueued_at=execution.enqueued_at, started_at=execution.started_at,
        finished_at=execution.finished_at, last_attempted_at=execution.last_attempted_at,
        args=execution.args, kwargs=execution.kwargs, backend=execution.backend,
        errors=errors, worker_ids=list(execution.worker_ids),
    )
    object.__setattr__(result, "_return_value", execution.return_value)
    return result


class PubSubBackend(BaseTaskBackend):
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
        return clients.publisher_client(client_options=self.options.get("client_options"))

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

    def publish_future(self, topic_name: str, message: dict[str, Any],
                       **attributes: str) -> Future:
        """Start publishing one JSON message; the future resolves to its message id.

        Bulk retries start a chunk of these and then wait for them together.
        """
        data = encode_message(message)
        return self.publisher.publish(self.topic_path(topic_name), data, **attributes)

    def publish(self, topic_name: str, message: dict[str, Any], **attributes: str) -> str:
        """Publish one JSON message (with string attributes) and wait for its message id."""
        future = self.publish_future(topic_name, message, **attributes)
        return str(future.result(timeout=self.publish_timeout))

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:
        from .models import TaskExecution, Trigger

        self.validate_task(task)
        route = self._route_for(task)
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        now = timezone.now()
        context = current_enqueue_context()
        execution = TaskExecution(
            task_name=route.name, task_path=route.path, backend=self.alias,
            args=args, kwargs=kwargs, enqueued_at=now,
            trigger=context.trigger if context else Trigger.ENQUEUE,
            retry_of_id=context.retry_of_id if context else None,
        )
        execution.task_id = execution.result_id
        message = build_message(execution.task_id, route.name, args, kwargs, now)
        # The runner reads the trigger attribute if it has to create the row itself.
        attributes = {"trigger": context.trigger} if context else {}
        # Refused before anything is recorded: a message Pub/Sub would refuse can never run.
        check_publish_size(route.name, self.topic_path(route.topic_name),
                           encode_message(message), attributes)
        execution._log("", execution.status, (context and context.note) or "enqueued")
        execution.save()
        result = self.result_from_execution(execution, task=task)
        send = partial(self._publish_execution, execution, route, message, result, attributes)
        if self.publish_on_commit:
            transaction.on_commit(send, robust=False)
        else:
            send()
        return result

    def _publish_execution(self, execution: Any, route: Any, message: dict[str, Any],
                           result: TaskResult, attributes: dict[str, str] | None = None) -> None:
        try:
            message_id = self.publish(route.topic_name, message, **(attributes or {}))
        except Exception as exc:
            logger.exception("Publishing task %s (%s) failed", route.path, execution.result_id)
            execution.fail_to_enqueue(
                f"{type(exc).__module__}.{type(exc).__qualname__}",
                "".join(traceback.format_exception(exc)),
            )
            execution.save()
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            result.errors.append(TaskError(
                exception_class_path=execution.errors[-1]["exception_class_path"],
                traceback=execution.errors[-1]["traceback"],
            ))
            raise TaskPublishError(
                f"Could not publish task {route.path!r} to topic "
                f"{self.topic_path(route.topic_name)!r}: {exc}. The run "
                f"{execution.result_id} is recorded as FAILED."
            ) from exc
        # Only update the message id so a delivery that already started is not overwritten.
        type(execution).objects.filter(pk=execution.pk, message_id__isnull=True).update(
            message_id=message_id
        )
        execution.message_id = message_id
        task_enqueued.send(type(self), task_result=result)

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
        return self.result_from_execution(execution)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        unknown = sorted(set(self.options) - KNOWN_OPTIONS)
        if unknown:
            messages.append(checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS'] has unknown keys: {', '.join(unknown)}.",
                hint=f"Known options are: {', '.join(sorted(KNOWN_OPTIONS))}.",
                id="gyrinx_tasks.E012",
            ))
        return messages
