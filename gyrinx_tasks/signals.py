"""Record runs made by other backends (e.g. Django's ImmediateBackend) through task signals.

PubSubBackend records its own runs as they happen, so its signals are ignored here.
"""

import logging

from django.db import DatabaseError, router, transaction
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

        try:
            with transaction.atomic(using=router.db_for_write(TaskExecution)):
                func(sender, task_result)
        except DatabaseError:
            logger.exception("Could not record task run %s", task_result.id)

    wrapper.__name__ = func.__name__
    return wrapper


@receiver(task_enqueued, dispatch_uid="gyrinx_tasks.record_enqueued")
@_safely
def record_enqueued(sender, task_result):
    from .backend import current_enqueue_context
    from .models import TaskExecution, Trigger

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
    execution.save()


@receiver(task_started, dispatch_uid="gyrinx_tasks.record_started")
@_safely
def record_started(sender, task_result):
    from .models import TaskExecution

    execution = TaskExecution.objects.filter(result_id=task_result.id).first()
    if execution is None:
        return
    execution.start(worker_id=task_result.worker_ids[-1] if task_result.worker_ids else "")
    execution.save()


@receiver(task_finished, dispatch_uid="gyrinx_tasks.record_finished")
@_safely
def record_finished(sender, task_result):
    from .models import TaskExecution

    execution = TaskExecution.objects.filter(result_id=task_result.id).first()
    if execution is None or execution.status != "RUNNING":
        return
    if task_result.status == TaskResultStatus.SUCCESSFUL:
        execution.succeed(normalize_json(task_result._return_value))
    else:
        error = task_result.errors[-1]
        execution.fail(error.exception_class_path, error.traceback)
    execution.save()
