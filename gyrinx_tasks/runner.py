"""Run one push delivery: claim its TaskExecution, apply kill switches, run, record."""

import inspect
import logging
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.tasks import TaskContext
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from .exceptions import UnknownTask
from .models import KillSwitch, State, SwitchMode, TaskExecution, Trigger
from .push import MAX_MESSAGE_ID, Delivery, MalformedPush, safe_text, text_problem
from .registry import get_route
from .workers import current_worker_id

logger = logging.getLogger("gyrinx_tasks")


# django-stubs declares TaskContext unfrozen; at run time it is frozen, as this must be.
@dataclass(frozen=True, slots=True, kw_only=True)
class PushTaskContext(TaskContext):  # type: ignore[misc]
    """TaskContext whose ``attempt`` is the delivery attempt Pub/Sub reports."""

    delivery_attempt: int

    @property
    def attempt(self) -> int:
        return self.delivery_attempt


@dataclass(frozen=True)
class Outcome:
    """What happened to a delivery; the view maps it to an HTTP status."""

    kind: str  # ran, failed, rejected, skipped, held, duplicate, busy (and start, internally)
    execution: TaskExecution | None
    detail: str = ""


def record_rejection(reason: str, raw_message: str, exc: MalformedPush | None = None,
                     delivery: Delivery | None = None) -> TaskExecution:
    """Keep a rejected delivery as a REJECTED run, with the raw message, and log it."""
    payload = exc.payload if exc else {}
    message_id = (delivery.message_id if delivery else None) or (exc.message_id if exc else None)
    # Whatever the message held, what is stored must be storable: text without NUL or
    # unpaired surrogates (PostgreSQL refuses both), cut to the columns' sizes.
    task_id = safe_text(str(delivery.task_id if delivery else payload.get("task_id") or ""), 255)
    task_name = safe_text(
        str(delivery.task_name if delivery else payload.get("task_name") or ""), 255)
    reason = safe_text(reason, 2000)
    raw_message = safe_text(raw_message)
    if message_id is not None and safe_text(message_id, MAX_MESSAGE_ID) != message_id:
        message_id = None  # an altered id could collide with another run's
    logger.error("Rejected Pub/Sub delivery %s: %s", message_id or "?", reason)
    with transaction.atomic():
        execution = None
        if task_id and not task_id.startswith("scheduled-"):
            execution = TaskExecution.objects.select_for_update().filter(result_id=task_id).first()
        if execution is None and message_id:
            execution = TaskExecution.objects.select_for_update().filter(
                message_id=message_id).first()
        if execution is None:
            execution = TaskExecution(task_id=task_id, task_name=task_name,
                                      message_id=message_id, trigger=_trigger(delivery))
            if delivery:
                execution.args, execution.kwargs = delivery.args, delivery.kwargs
        if execution.status in (State.SUCCESSFUL, State.SKIPPED, State.REJECTED):
            return execution  # already settled; a duplicate delivery changes nothing
        execution.reject(reason, raw_message)
        execution.save()
    return execution


def kill_switch_state(route: Any) -> tuple[str, str]:
    """(SwitchMode, why) when the route is switched off, or ("", "") when it is on.

    The environment-variable switch wins and always skips: it is for deploys, where holding
    messages for an unknown time is rarely what was meant. One database query.
    """
    if not route.env_switch_enabled():
        return SwitchMode.SKIP, f"Kill switch {route.enabled_env_var} is off."
    mode = KillSwitch.off_mode(route.name)
    if mode == SwitchMode.HOLD:
        return mode, (f"Kill switch for {route.name} is off in the database (hold): "
                      "Pub/Sub keeps the message until it is switched on.")
    if mode:
        return SwitchMode.SKIP, f"Kill switch for {route.name} is off in the database."
    return "", ""


def kill_switch_reason(route: Any) -> str:
    """Why the route is switched off (environment variable or database), or "" if it is on."""
    return kill_switch_state(route)[1]


def _trigger(delivery: Delivery | None) -> str:
    value = delivery.attributes.get("trigger", "") if delivery else ""
    if value in Trigger.values:
        return value
    return Trigger.SCHEDULE if delivery and delivery.is_scheduled else Trigger.ENQUEUE


def _claim(delivery: Delivery, route: Any) -> TaskExecution:
    """Find (or create) the run this delivery belongs to, locked for the transaction."""
    runs = TaskExecution.objects.select_for_update()
    execution = None
    if not delivery.is_scheduled:
        execution = runs.filter(result_id=delivery.task_id).first()
    if execution is None:
        # Scheduled messages share a task id per job: each delivery is its own run.
        execution = runs.filter(message_id=delivery.message_id).first()
    if execution is None:
        execution = TaskExecution(
            task_id=delivery.task_id, task_name=route.name, task_path=route.path,
            message_id=delivery.message_id, trigger=_trigger(delivery),
            args=delivery.args, kwargs=delivery.kwargs,
            enqueued_at=delivery.enqueued_at or timezone.now(),
        )
        if not delivery.is_scheduled and len(delivery.task_id) <= 64:
            execution.result_id = delivery.task_id
        note = f"delivered as message {delivery.message_id}"
        requested_by = delivery.attributes.get("requested_by", "")[:150]
        if requested_by:  # Run now from the admin: say who, since the run has no user field
            note += f"; run now by {requested_by}"
        execution._log("", State.READY, note)
        execution.save()
    elif not execution.message_id:
        execution.message_id = delivery.message_id
    return execution


def _arguments_problem(task: Any, args: list, kwargs: dict) -> str:
    try:
        signature = inspect.signature(task.func)
        if task.takes_context:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {task.module_path}: {exc}."
    return ""


def _settle_or_start(delivery: Delivery, route: Any, problem: str, raw_message: str) -> Outcome:
    """Inside a transaction: settle the delivery without running it, or mark it RUNNING."""
    execution = _claim(delivery, route)
    if execution.status in (State.SUCCESSFUL, State.SKIPPED, State.REJECTED):
        return Outcome("duplicate", execution, f"Run already {execution.status}.")
    if execution.status == State.RUNNING and execution.last_attempted_at and (
        timezone.now() - execution.last_attempted_at < timedelta(seconds=route.ack_deadline)
    ):
        return Outcome("busy", execution, "This run is still running on another worker.")
    if problem:
        execution.reject(problem, raw_message)
        execution.save()
        logger.error("Rejected Pub/Sub delivery %s: %s", delivery.message_id, problem)
        return Outcome("rejected", execution, problem)
    mode, reason = kill_switch_state(route)
    if mode == SwitchMode.HOLD:
        # Leave the run as it is (READY, FAILED, or RUNNING from a worker that died) and
        # write nothing: a held message is redelivered for days, and each redelivery must not
        # grow its row. Not acknowledging is what keeps the message in Pub/Sub.
        logger.info("Held %s (%s): %s", route.name, execution.result_id, reason)
        return Outcome("held", execution, reason)
    if reason:
        if execution.status == State.RUNNING:
            # The attempt's worker stopped without an outcome (the busy check above let this
            # delivery through): record that attempt as lost, so the run can be skipped.
            execution.fail("builtins.TimeoutError", (
                f"Attempt {execution.attempts} did not finish within the ack deadline "
                f"({route.ack_deadline} s); its worker stopped or was cut off. It is not run "
                "again because the kill switch is off."))
        execution.skip(reason)
        execution.save()
        logger.warning("Skipped %s (%s): %s", route.name, execution.result_id, reason)
        return Outcome("skipped", execution, reason)
    execution.start(current_worker_id(), delivery.delivery_attempt)
    execution.save()
    return Outcome("start", execution)


def handle_delivery(delivery: Delivery, raw_message: str) -> Outcome:
    from .backend import PubSubBackend, result_from_execution

    try:
        route = get_route(delivery.task_name)
    except UnknownTask as exc:
        return Outcome("rejected", record_rejection(str(exc), raw_message, delivery=delivery))
    problem = _arguments_problem(route.task, delivery.args, delivery.kwargs)

    try:
        with transaction.atomic():
            outcome = _settle_or_start(delivery, route, problem, raw_message)
    except IntegrityError:
        # Another transaction holds an uncommitted row for this run: an enqueue whose
        # transaction has not committed yet, or a duplicate delivery racing this one.
        return Outcome("busy", None, "This run is being recorded elsewhere; retry later.")
    if outcome.kind != "start":
        return outcome
    execution = outcome.execution
    assert execution is not None

    backend = route.task.get_backend()
    sender = type(backend) if isinstance(backend, PubSubBackend) else PubSubBackend
    task_started.send(sender, task_result=result_from_execution(execution, route.task))
    try:
        if route.task.takes_context:
            context = PushTaskContext(task_result=result_from_execution(execution, route.task),
                                      delivery_attempt=execution.attempts)
            value = route.task.call(context, *delivery.args, **delivery.kwargs)
        else:
            value = route.task.call(*delivery.args, **delivery.kwargs)
        value = normalize_json(value)
        problem = text_problem(value)
        if problem:  # PostgreSQL could not record it; SQLite is held to the same rule
            raise ValueError(f"The task's return value {problem}")
    except Exception as exc:
        path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        # The task's own text may hold what no database stores (NUL, unpaired surrogates).
        execution.fail(path, safe_text("".join(traceback.format_exception(exc))))
        execution.save()
        task_finished.send(sender, task_result=result_from_execution(execution, route.task))
        return Outcome("failed", execution, f"{path}: {exc}")
    execution.succeed(value)
    execution.save()
    task_finished.send(sender, task_result=result_from_execution(execution, route.task))
    return Outcome("ran", execution)

