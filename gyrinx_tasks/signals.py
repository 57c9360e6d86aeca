"""Record runs made by other backends (e.g. Django's ImmediateBackend) through task signals.

PubSubBackend records its own runs as they happen, so its signals are ignored here. Each
signal is a transition in models.py ("Other backends' transitions"): the run is inserted once,
and started and finished only on the attempt the signal reports, so a duplicate or late signal
never overwrites a later state. A signal whose run is not recorded yet (its task_enqueued was
lost, or comes later) records it first.
"""

import logging

from django.db import DatabaseError, IntegrityError, router, transaction
from django.dispatch import receiver
from django.tasks import TaskResultStatus
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.json import normalize_json

logger = logging.getLogger("gyrinx_tasks")


def _recorded_elsewhere(sender: type) -> bool:
    from .backend import PubSubBackend

    return issubclass(sender, PubSubBackend)


def _safely(func):
    # Recording is best effort: a database hiccup must not break the caller's task, nor touch
    # the caller's transaction. The savepoint (a transaction of its own outside one) is what
    # keeps a failed write from marking the caller's atomic() for rollback.
    def wrapper(sender, task_result, **kwargs):
        if _recorded_elsewhere(sender):
            return
        from .models import TaskExecution

        using = router.db_for_write(TaskExecution)
        try:
            with transaction.atomic(using=using):
                func(sender, task_result, TaskExecution.objects.using(using))
        except DatabaseError:
            logger.exception("Could not record task run %s", task_result.id)

    wrapper.__name__ = func.__name__
    return wrapper


def _insert(sender, task_result, runs) -> None:
    """Insert the run as enqueued, unless it is recorded already (then it stays as it is)."""
    from .backend import current_enqueue_context
    from .models import TaskExecution, Trigger

    if runs.filter(result_id=task_result.id).exists():
        return
    context = current_enqueue_context()  # set by a retry, for instance
    execution = TaskExecution(
        result_id=task_result.id, task_id=task_result.id, task_name=task_result.task.name,
        task_path=task_result.task.module_path, backend=task_result.backend,
        queue_name=task_result.task.queue_name,
        args=task_result.args, kwargs=task_result.kwargs, enqueued_at=task_result.enqueued_at,
        trigger=context.trigger if context else Trigger.ENQUEUE,
        retry_of_id=context.retry_of_id if context else None,
    )
    note = f"enqueued by {sender.__name__}"
    execution._log("", execution.status, f"{context.note}, {note}" if context and context.note
                   else note)
    try:
        with transaction.atomic(using=runs.db):
            runs.create_run(execution)
    except IntegrityError:
        pass  # recorded meanwhile by another signal of the same run


def _worker(task_result) -> str:
    return task_result.worker_ids[-1] if task_result.worker_ids else ""


@receiver(task_enqueued, dispatch_uid="gyrinx_tasks.record_enqueued")
@_safely
def record_enqueued(sender, task_result, runs):
    _insert(sender, task_result, runs)


@receiver(task_started, dispatch_uid="gyrinx_tasks.record_started")
@_safely
def record_started(sender, task_result, runs):
    _insert(sender, task_result, runs)
    runs.record_other_started(task_result.id, task_result.attempts, _worker(task_result))


@receiver(task_finished, dispatch_uid="gyrinx_tasks.record_finished")
@_safely
def record_finished(sender, task_result, runs):
    _insert(sender, task_result, runs)
    if task_result.status == TaskResultStatus.SUCCESSFUL:
        runs.record_other_finished(task_result.id, task_result.attempts, _worker(task_result),
                                   return_value=normalize_json(task_result._return_value))
    else:
        error = task_result.errors[-1]
        runs.record_other_finished(task_result.id, task_result.attempts, _worker(task_result),
                                   error=(error.exception_class_path, error.traceback))
