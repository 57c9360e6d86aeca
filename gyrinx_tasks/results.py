"""Django's TaskResult for a stored run, as the backend and the push endpoint hand it out."""

from dataclasses import dataclass
from typing import Any

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TASK_REFRESH_ATTRS, TaskError
from django.tasks.exceptions import InvalidTask


# django-stubs declares TaskResult unfrozen; at run time it is frozen, as this must be.
@dataclass(frozen=True, slots=True, kw_only=True)
class PubSubTaskResult(TaskResult):  # type: ignore[misc]
    """A TaskResult whose ``attempts`` is the run's true count of attempts.

    Django counts attempts as ``len(worker_ids)``; a run keeps only the first and last of its
    worker ids (models.capped), and an attempt may follow deliveries that never started it
    (Pub/Sub's deliveryAttempt), so the count is stored and reported here. The task context's
    ``attempt`` reads this too.
    """

    recorded_attempts: int = 0

    @property
    def attempts(self) -> int:
        return max(self.recorded_attempts, len(self.worker_ids))

    def refresh(self) -> None:
        self._refresh_from(self.task.get_backend().get_result(self.id))

    async def arefresh(self) -> None:
        self._refresh_from(await self.task.get_backend().aget_result(self.id))

    def _refresh_from(self, refreshed: TaskResult) -> None:
        # As Django's refresh(), plus the stored count of attempts.
        for attr in TASK_REFRESH_ATTRS:
            object.__setattr__(self, attr, getattr(refreshed, attr))
        object.__setattr__(self, "recorded_attempts", refreshed.attempts)


def result_from_execution(execution: Any, task: Any) -> PubSubTaskResult:
    """A Django TaskResult reflecting a stored TaskExecution, for ``task`` as it was enqueued
    (its queue_name; its backend when the caller sets it, see PubSubBackend.get_result)."""
    queue_name = getattr(execution, "queue_name", "") or task.queue_name
    if queue_name != task.queue_name:
        try:
            task = task.using(queue_name=queue_name)
        except InvalidTask:
            pass  # the backend no longer takes that queue: the task as it is routed now
    errors = [
        TaskError(exception_class_path=e["exception_class_path"], traceback=e["traceback"])
        for e in execution.errors
    ]
    result = PubSubTaskResult(
        task=task, id=execution.result_id, status=execution.django_status,
        enqueued_at=execution.enqueued_at, started_at=execution.started_at,
        finished_at=execution.finished_at, last_attempted_at=execution.last_attempted_at,
        args=execution.args, kwargs=execution.kwargs, backend=execution.backend,
        errors=errors, worker_ids=list(execution.worker_ids),
        recorded_attempts=execution.attempts,
    )
    object.__setattr__(result, "_return_value", execution.return_value)
    return result


def new_result(task: Any, result_id: str, enqueued_at: Any, args: Any, kwargs: Any,
               backend: str) -> PubSubTaskResult:
    """The TaskResult of a run just enqueued (READY, no attempt yet), as
    result_from_execution() makes it from the run's row, without the row."""
    result = PubSubTaskResult(
        task=task, id=result_id, status=TaskResultStatus.READY, enqueued_at=enqueued_at,
        started_at=None, finished_at=None, last_attempted_at=None, args=args, kwargs=kwargs,
        backend=backend, errors=[], worker_ids=[], recorded_attempts=0,
    )
    object.__setattr__(result, "_return_value", None)
    return result
