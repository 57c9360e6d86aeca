"""Handle one push delivery: the claim, the run, and the recording of its outcome.

Each step has its module: claim.py decides what the delivery does and starts the run,
execute.py calls the task, record.py writes the attempt's outcome. Django's task signals
are sent here, as Django's contract says: task_started for each attempt that starts,
task_finished once per run, when it ends (succeeded, gave up, skipped or rejected), never
between attempts.
"""

import logging
import time
from typing import Any

from django.tasks.signals import task_finished, task_started

from . import claim as claims
from . import traces
from .backend import PubSubBackend
from .claim import record_rejection
from .exceptions import UnknownTask
from .execute import arguments_problem, run_attempt
from .messages import TRACEPARENT_ATTRIBUTE
from .outcomes import Outcome, OutcomeKind
from .push import Delivery
from .record import record_outcome
from .registry import get_route
from .results import result_from_execution

# Django logs a failed task's exception from task_finished, which a run that Pub/Sub retries
# no longer sends after each attempt. Each failed attempt is logged here instead, on Django's
# logger and in its words, so the traceback still reaches the log, and
# redaction.RedactedTaskLogFilter still strips it for routes with redact=True.
django_tasks_logger = logging.getLogger("django.tasks")
logger = logging.getLogger("gyrinx_tasks")


def _sender(task: Any) -> type:
    # Our backend's class (or the subclass the task uses), which signals.py knows not to
    # record a second time.
    backend = task.get_backend()
    return type(backend) if isinstance(backend, PubSubBackend) else PubSubBackend


def announce_finished(execution: Any, task: Any, sender: type | None = None) -> None:
    """Send Django's task_finished for a run that has ended (also a cancelled one)."""
    task_finished.send(sender or _sender(task),
                       task_result=result_from_execution(execution, task))


def _announce_end(outcome: Outcome, task: Any, sender: type | None = None) -> None:
    if outcome.kind.ends_the_run and outcome.execution is not None:
        announce_finished(outcome.execution, task, sender)


def handle_delivery(delivery: Delivery, raw_message: str) -> Outcome:
    """Run one delivery inside the trace its message carries (traces.run_span)."""
    with traces.run_span(delivery.task_name, delivery.message_id,
                         delivery.attributes.get(TRACEPARENT_ATTRIBUTE, ""),
                         delivery.delivery_attempt) as span:
        outcome, error = _handle(delivery, raw_message)
        execution = outcome.execution
        traces.end_run_span(span, str(outcome.kind), execution.result_id if execution else "",
                            execution.attempts if execution else None, error)
        if error is not None and isinstance(error, KeyboardInterrupt):
            raise error  # recorded; let whoever stops the process stop it
        return outcome


def _labels(delivery: Delivery, execution: Any, seconds: float | None = None) -> dict[str, Any]:
    """The run's labels and trace for its log lines (cloud_logging.CloudLoggingFormatter)."""
    labels = {"task": delivery.task_name, "result_id": execution.result_id,
              "message_id": delivery.message_id, "attempt": execution.attempts,
              "trace": traces.current_traceparent()}
    if seconds is not None:
        labels["duration"] = seconds
    return labels


def _handle(delivery: Delivery, raw_message: str) -> tuple[Outcome, BaseException | None]:
    try:
        route = get_route(delivery.task_name)
    except UnknownTask as exc:
        # No task to speak of: no signal, only the record.
        return Outcome(OutcomeKind.REJECTED, record_rejection(
            str(exc), raw_message, delivery=delivery), str(exc)), None
    task = route.task
    limit = claims.max_attempts(route)
    claimed = claims.claim(delivery, route, arguments_problem(task, delivery.args,
                                                              delivery.kwargs), raw_message)
    if isinstance(claimed, Outcome):
        _announce_end(claimed, task)
        return claimed, None
    execution = claimed
    sender = _sender(task)  # once a delivery: it looks the backend up
    task_started.send(sender, task_result=result_from_execution(execution, task))
    started = time.monotonic()
    attempt = run_attempt(execution, delivery, task, limit,
                          lambda attempts: claims.give_up_reason(attempts, limit))
    seconds = time.monotonic() - started
    outcome = record_outcome(execution, route, attempt.kind, attempt.apply, attempt.what,
                             attempt.detail)
    labels = _labels(delivery, execution, seconds)
    if attempt.error is not None:
        django_tasks_logger.error(
            "Task id=%s path=%s attempt %s failed (%s)", execution.result_id, task.module_path,
            execution.attempts, "gave up" if attempt.kind == OutcomeKind.GAVE_UP
            else "Pub/Sub retries it", exc_info=attempt.error, extra=labels)
    else:
        logger.info("Task %s (%s) attempt %s %s in %.3f s", task.module_path,
                    execution.result_id, execution.attempts, attempt.what, seconds,
                    extra=labels)
    _announce_end(outcome, task, sender)
    return outcome, attempt.error
