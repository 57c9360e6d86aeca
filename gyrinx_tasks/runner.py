"""Run one push delivery: claim its TaskExecution, apply kill switches, run, record."""

import inspect
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.tasks import TaskContext
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from . import statements
from .exceptions import UnknownTask
from .models import State, SwitchMode, TaskExecution, Trigger
from .push import MAX_MESSAGE_ID, Delivery, MalformedPush, safe_text, text_problem
from .registry import get_route
from .statements import SWITCH, insert_run, off_mode, select_run, update_run
from .workers import current_worker_id

logger = logging.getLogger("gyrinx_tasks")

# Message attribute our backend sets when it recorded the run before publishing: a delivery
# of such a message never creates the run's row itself (that could run a rolled-back enqueue).
RECORDED_ATTRIBUTE = "gyrinx_recorded"
# How long a claim waits on PostgreSQL for a row lock or for another transaction's insert of
# the same run (an enqueue not committed yet) before answering "busy". Claims hold their locks
# for a few queries only, so this is only reached when some other transaction stays open.
LOCK_TIMEOUT_MS = 2000
# A message our backend published after recording its run, whose row is still not visible
# this long after enqueued_at, came from a transaction that rolled back: it is not run.
UNCOMMITTED_GRACE = timedelta(hours=1)
# Outcomes of tasks that ran but could not be recorded (the database failed), by (run pk,
# attempt): a redelivery to this process records them instead of running the task again.
UNRECORDED_LIMIT = 200  # each holds a return value, so a bounded few
_unrecorded: "OrderedDict[tuple[int, int], tuple[str, Callable[[TaskExecution], None]]]" = (
    OrderedDict())
_unrecorded_lock = threading.Lock()


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

    # ran, failed, gave_up, rejected, skipped, held, duplicate, busy, superseded, unrecorded
    # (and start, internally)
    kind: str
    execution: TaskExecution | None
    detail: str = ""


def _db() -> str:
    # Every query of a delivery goes to the database the routers pick for writing runs, so
    # its locks, transactions and writes are all on one connection.
    return router.db_for_write(TaskExecution)


# What a delivery changes on an existing run. Saving only these keeps each attempt from
# rewriting the run's arguments (up to 10 MB) along with its state.
PROGRESS_FIELDS = ["status", "attempts", "worker_ids", "delivery_attempt", "started_at",
                   "last_attempted_at", "finished_at", "timeline", "timeline_omitted", "errors",
                   "errors_omitted", "status_detail", "return_value", "gave_up", "message_id",
                   "raw_message"]


def _loaded(execution: TaskExecution) -> TaskExecution:
    """Remember the progress fields as read, so _save writes only what changes."""
    # Straight from the instance's __dict__, where each field (the FSM status too) keeps its
    # value: the runner's rows are never deferred, and this runs twice per delivery.
    values = execution.__dict__
    values["_gyrinx_progress"] = {name: values[name] for name in PROGRESS_FIELDS}
    return execution


def _changed(execution: TaskExecution) -> list[str]:
    # Transitions assign new values (lists are rebuilt, never mutated in place), so a
    # comparison with what was read finds exactly the fields they set.
    values = execution.__dict__
    read = values.get("_gyrinx_progress")
    if read is None:
        return PROGRESS_FIELDS
    return [name for name in PROGRESS_FIELDS if values[name] != read[name]]


def _clone(execution: TaskExecution) -> TaskExecution:
    """A shallow copy of the run (as copy.copy, without its generic pickling machinery)."""
    clone = TaskExecution.__new__(TaskExecution)
    clone.__dict__.update(execution.__getstate__())
    return clone


def _save(execution: TaskExecution, using: str) -> None:
    if execution._state.adding:
        insert_run(using, execution)
    else:
        changed = _changed(execution)
        if changed:
            update_run(using, execution, changed)
    _loaded(execution)


def record_rejection(reason: str, raw_message: str, exc: MalformedPush | None = None,
                     delivery: Delivery | None = None,
                     fresh_row: bool = False) -> TaskExecution:
    """Keep a rejected delivery as a REJECTED run, with the raw message, and log it.

    ``fresh_row``: never settle the run the message's task id names (its enqueue rolled back;
    a row of that id appearing later must stay free to commit).
    """
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
    using = _db()
    with transaction.atomic(using=using):
        runs = TaskExecution.objects.using(using).select_for_update()
        execution = None
        if task_id and not task_id.startswith("scheduled-") and not fresh_row:
            execution = runs.filter(result_id=task_id).first()
        if execution is None and message_id:
            execution = runs.filter(message_id=message_id).first()
        if execution is None:
            execution = TaskExecution(task_id=task_id, task_name=task_name,
                                      message_id=message_id, trigger=_trigger(delivery))
            if delivery:
                execution.args, execution.kwargs = delivery.args, delivery.kwargs
        if execution.settled:
            return execution  # already settled; a duplicate delivery changes nothing
        execution.reject(reason, raw_message)
        _save(execution, using)
    return execution


def kill_switch_state(route: Any, execution: TaskExecution | None = None) -> tuple[str, str]:
    """(SwitchMode, why) when the route is switched off, or ("", "") when it is on.

    The environment-variable switch wins and always skips: it is for deploys, where holding
    messages for an unknown time is rarely what was meant. One database query, or none when
    ``execution`` was read with its switch (statements.select_run's ``switch_for``).
    """
    if not route.env_switch_enabled():
        return SwitchMode.SKIP, f"Kill switch {route.enabled_env_var} is off."
    if execution is not None and hasattr(execution, SWITCH):
        mode = getattr(execution, SWITCH) or ""
    else:
        mode = off_mode(route.name)
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


def _read_run(delivery: Delivery, route: Any, using: str) -> TaskExecution | None:
    """The delivery's run, with its task's kill switch read in the same statement.

    FOR UPDATE NOWAIT: in a transaction it locks the row; either way a row another
    transaction holds locked answers "busy" at once (Pub/Sub retries) rather than making this
    request wait for that transaction.
    """
    execution = None
    if not delivery.is_scheduled:
        execution = select_run(using, "result_id", delivery.task_id, lock=True,
                               switch_for=route.name)
    if execution is None:
        # Scheduled messages share a task id per job: each delivery is its own run.
        execution = select_run(using, "message_id", delivery.message_id, lock=True,
                               switch_for=route.name)
    return None if execution is None else _loaded(execution)


def _claim(delivery: Delivery, route: Any, using: str) -> TaskExecution | None:
    """Find (or create) the run this delivery belongs to, locked for the transaction.

    None when the message says its run was recorded before publishing (our backend's
    enqueue) but no such row is visible: that enqueue has not committed, or rolled back.
    """
    execution = _read_run(delivery, route, using)
    if execution is None and delivery.attributes.get(RECORDED_ATTRIBUTE):
        return None  # never insert it ourselves: that would run a rolled-back enqueue
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
        # On PostgreSQL this insert waits (LOCK_TIMEOUT_MS at most) while another transaction
        # holds an uncommitted row of the same id; then IntegrityError or LockNotAvailable.
        _bound_lock_waits(using)
        _save(execution, using)
    elif not execution.message_id:
        execution.message_id = delivery.message_id
    return execution


@lru_cache(maxsize=1024)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    # A task's function never changes; inspect.signature costs more than the bind below.
    return inspect.signature(func)


def _arguments_problem(task: Any, args: list, kwargs: dict) -> str:
    try:
        signature = _signature(task.func)
        if task.takes_context:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {task.module_path}: {exc}."
    return ""


def _bound_lock_waits(using: str) -> None:
    """On PostgreSQL, let this transaction wait LOCK_TIMEOUT_MS at most for any lock."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)",
                           [f"{LOCK_TIMEOUT_MS}ms"])


def _lock_not_available(exc: BaseException) -> bool:
    # PostgreSQL's lock_not_available (55P03), raised when lock_timeout expires.
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"


def _lost_attempt_note(execution: TaskExecution, route: Any) -> str:
    return (f"attempt {execution.attempts} recorded no outcome within the ack deadline "
            f"({route.ack_deadline} s): its worker stopped, was cut off, or could not reach "
            "the database; presumed lost")


def _uncommitted(delivery: Delivery, raw_message: str) -> Outcome:
    """The delivery's recorded run is not visible: wait for its commit, or give up on it."""
    enqueued_at = delivery.enqueued_at
    if enqueued_at is not None and timezone.now() - enqueued_at < UNCOMMITTED_GRACE:
        return Outcome("busy", None, (
            "The run's row is not committed yet (the enqueue's transaction is still open); "
            "retry later."))
    reason = (f"The run {delivery.task_id} does not exist {UNCOMMITTED_GRACE} after "
              "enqueued_at: the transaction that enqueued it rolled back (or the run was "
              "deleted), so it is not run.")
    return Outcome("rejected", record_rejection(reason, raw_message, delivery=delivery,
                                                fresh_row=True), reason)


class _Raced(Exception):
    """The run changed between the unlocked read and the write: decide again, locked."""


def _save_if_unchanged(execution: TaskExecution, using: str) -> None:
    """Write what changed, only if the row still holds what was read (else _Raced)."""
    changed = _changed(execution)
    if not changed:
        return
    read = execution.__dict__["_gyrinx_progress"]
    if not update_run(using, execution, changed, expect={
            "status": read["status"], "attempts": read["attempts"],
            "timeline": read["timeline"]}):
        raise _Raced
    _loaded(execution)


def _settle_or_start_unlocked(delivery: Delivery, route: Any, problem: str, raw_message: str,
                              using: str) -> Outcome | None:
    """The usual delivery without a transaction: read the run (and its kill switch) in one
    statement, decide, and write the decision with a compare-and-set.

    None when the run is not there to read (a scheduled delivery's first, an uncommitted
    enqueue): the locked path decides those. Raises _Raced if another writer got there first.
    On PostgreSQL the read is FOR UPDATE NOWAIT outside a transaction: it takes no lock, but
    fails at once (busy) while another transaction holds the row, as the locked claim does.
    """
    execution = _read_run(delivery, route, using)
    if execution is None:
        return None
    if not execution.message_id:
        execution.message_id = delivery.message_id
    return _decide(execution, delivery, route, problem, raw_message, using, _save_if_unchanged)


def _settle_or_start(delivery: Delivery, route: Any, problem: str, raw_message: str,
                     using: str) -> Outcome:
    """Inside a transaction: settle the delivery without running it, or mark it RUNNING."""
    execution = _claim(delivery, route, using)
    if execution is None:
        return Outcome("uncommitted", None)
    return _decide(execution, delivery, route, problem, raw_message, using, _save)


def _decide(execution: TaskExecution, delivery: Delivery, route: Any, problem: str,
            raw_message: str, using: str,
            write: Callable[[TaskExecution, str], None]) -> Outcome:
    if execution.settled:
        return Outcome("duplicate", execution, f"Run already {execution.status}.")
    if execution.status == State.RUNNING:
        with _unrecorded_lock:
            late = _unrecorded.pop((execution.pk, execution.attempts), None)
        if late is not None:
            # This process ran the attempt but the database refused its outcome: record it
            # now rather than run the task again.
            kind, apply = late
            apply(execution)
            execution.note(f"attempt {execution.attempts}'s outcome recorded late, on a "
                           "redelivery, after a database failure")
            try:
                write(execution, using)
            except _Raced:
                # Decided again under the lock, which must still find the outcome.
                _remember_unrecorded((execution.pk, execution.attempts), kind, apply)
                raise
            return Outcome(kind, execution, "The outcome of an earlier attempt, recorded late.")
    if execution.status == State.RUNNING and execution.last_attempted_at and (
        timezone.now() - execution.last_attempted_at < timedelta(seconds=route.ack_deadline)
    ):
        return Outcome("busy", execution, "This run is still running on another worker.")
    if problem:
        execution.reject(problem, raw_message)
        write(execution, using)
        logger.error("Rejected Pub/Sub delivery %s: %s", delivery.message_id, problem)
        return Outcome("rejected", execution, problem)
    mode, reason = kill_switch_state(route, execution)
    if mode == SwitchMode.HOLD:
        # Leave the run as it is (READY, FAILED, or RUNNING from a worker that died) and
        # write nothing: a held message is redelivered for days, and each redelivery must not
        # grow its row. Not acknowledging is what keeps the message in Pub/Sub.
        logger.info("Held %s (%s): %s", route.name, execution.result_id, reason)
        return Outcome("held", execution, reason)
    next_attempt = max(execution.attempts + 1, delivery.delivery_attempt or 0)
    if reason or (route.max_attempts and next_attempt > route.max_attempts):
        if execution.status == State.RUNNING:
            # The attempt's worker stopped without an outcome (the busy check above let this
            # delivery through): record that attempt as lost before settling the run.
            execution.fail("builtins.TimeoutError", (
                f"Attempt {execution.attempts} did not finish within the ack deadline "
                f"({route.ack_deadline} s); its worker stopped or was cut off. It is not run "
                "again because " + ("the kill switch is off." if reason else
                                    "the route's max_attempts is reached.")))
        if reason:
            execution.skip(reason)
            write(execution, using)
            logger.warning("Skipped %s (%s): %s", route.name, execution.result_id, reason)
            return Outcome("skipped", execution, reason)
        gave_up = _give_up_reason(execution.attempts, route)
        execution.give_up(gave_up)
        write(execution, using)
        logger.error("Gave up %s (%s): %s", route.name, execution.result_id, gave_up)
        return Outcome("gave_up", execution, gave_up)
    if execution.status == State.RUNNING:
        execution.note(_lost_attempt_note(execution, route))
    execution.start(current_worker_id(), delivery.delivery_attempt)
    write(execution, using)
    return Outcome("start", execution)


def _give_up_reason(attempts: int, route: Any) -> str:
    return (f"Gave up after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"(the route's max_attempts is {route.max_attempts}); Pub/Sub is not asked to "
            "deliver it again. Retry it from the admin once the cause is fixed.")


def _remember_unrecorded(key: tuple[int, int], kind: str,
                         apply: Callable[[TaskExecution], None]) -> None:
    with _unrecorded_lock:
        _unrecorded[key] = (kind, apply)
        while len(_unrecorded) > UNRECORDED_LIMIT:
            _unrecorded.popitem(last=False)


def _finish(execution: TaskExecution, using: str, kind: str,
            apply: Callable[[TaskExecution], None], what: str) -> tuple[TaskExecution, bool]:
    """Record this attempt's outcome if the run is still this attempt's; return (row, won).

    A compare-and-set: a slower attempt whose run was started again by a newer delivery (the
    ack deadline passed) must not overwrite the newer attempt's record. Its outcome is kept
    as a timeline note instead.
    """
    attempt = execution.attempts
    # First, one conditional UPDATE: it writes only if the row is still this attempt's as
    # this delivery left it: RUNNING, the same attempt and the same timeline (every change the
    # runner makes to a run, a superseded attempt's note included, appends to its timeline).
    # That is nearly always so, and costs one statement, no lock.
    candidate = _clone(execution)
    apply(candidate)
    if update_run(using, candidate, _changed(candidate), expect={
            "status": State.RUNNING, "attempts": attempt, "timeline": execution.timeline}):
        return candidate, True
    # Otherwise read the row under a lock and decide on what it holds now.
    with transaction.atomic(using=using):
        current = TaskExecution.objects.using(using).select_for_update().filter(
            pk=execution.pk).first()
        if current is None:  # deleted meanwhile (by staff): nothing to record
            return execution, False
        if current.status == State.RUNNING and current.attempts == attempt:
            apply(current)
            _save(current, using)
            return current, True
        current.note(f"attempt {attempt} {what} after it was superseded (the run is now "
                     f"{current.status}, attempt {current.attempts}); its outcome is not the "
                     "run's")
        current.save(using=using, update_fields=["timeline", "timeline_omitted"])
        return current, False


def _record_outcome(execution: TaskExecution, route: Any, using: str, kind: str,
                    apply: Callable[[TaskExecution], None], what: str,
                    detail: str) -> Outcome:
    attempt = execution.attempts
    try:
        try:
            current, won = _finish(execution, using, kind, apply, what)
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as exc:
            # The outcome itself cannot be stored (a value the database refuses): record the
            # attempt as failed with that reason, which can always be stored.
            path = f"{type(exc).__module__}.{type(exc).__qualname__}"
            reason = safe_text(f"The task {what}, but its outcome could not be stored: {exc}")
            kind, detail, what = "failed", reason, f"{what} (outcome not storable)"

            def apply(run: TaskExecution) -> None:
                run.fail(path, reason)

            current, won = _finish(execution, using, kind, apply, what)
    except (OperationalError, InterfaceError) as exc:
        # The task ran but its outcome could not be written. At-least-once: the run stays
        # RUNNING; a redelivery to this process records the outcome remembered here, and
        # elsewhere the task runs again once the ack deadline has passed.
        _remember_unrecorded((execution.pk, attempt), kind, apply)
        logger.error("Task %s (%s) attempt %s %s, but the database refused its outcome: %s",
                     route.name, execution.result_id, attempt, what, exc)
        apply(execution)  # in memory only, for task_finished
        return Outcome("unrecorded", execution, (
            f"The task ran and {what}, but its outcome could not be recorded (the database "
            f"failed: {safe_text(str(exc), 300)}). The run stays RUNNING: a redelivery "
            f"records the outcome if it reaches this instance, else the task runs again after "
            f"the ack deadline ({route.ack_deadline} s)."))
    if not won:
        apply(execution)  # in memory only, for task_finished
        return Outcome("superseded", current, (
            f"Attempt {attempt} {what}, but the run was started again meanwhile (attempt "
            f"{current.attempts}, now {current.status}); the newer attempt's record stands and "
            "this outcome is noted in its timeline."))
    return Outcome(kind, current, detail)


def handle_delivery(delivery: Delivery, raw_message: str) -> Outcome:
    from .backend import PubSubBackend, result_from_execution

    try:
        route = get_route(delivery.task_name)
    except UnknownTask as exc:
        return Outcome("rejected", record_rejection(str(exc), raw_message, delivery=delivery),
                       str(exc))
    problem = _arguments_problem(route.task, delivery.args, delivery.kwargs)

    using = _db()
    try:
        outcome = None
        # A scheduled delivery's run is made by its first delivery: straight to the locked
        # claim, which inserts it.
        if connections[using].vendor in statements.VENDORS and not delivery.is_scheduled:
            try:
                outcome = _settle_or_start_unlocked(delivery, route, problem, raw_message,
                                                    using)
            except _Raced:
                outcome = None
        if outcome is None:
            with transaction.atomic(using=using):
                outcome = _settle_or_start(delivery, route, problem, raw_message, using)
    except IntegrityError:
        # Another transaction inserted this run first: an enqueue that committed while this
        # claim waited, or a duplicate delivery racing this one. Pub/Sub retries.
        return Outcome("busy", None, "This run is being recorded elsewhere; retry later.")
    except OperationalError as exc:
        if not _lock_not_available(exc):
            raise
        return Outcome("busy", None, (
            "Another transaction holds this run (an enqueue not committed yet, or a duplicate "
            "delivery); retry later."))
    if outcome.kind == "uncommitted":
        return _uncommitted(delivery, raw_message)
    if outcome.kind != "start":
        return outcome
    execution = outcome.execution
    assert execution is not None

    backend = route.task.get_backend()
    sender = type(backend) if isinstance(backend, PubSubBackend) else PubSubBackend
    try:
        # Inside the try: once the run is RUNNING, whatever happens is recorded on it.
        task_started.send(sender, task_result=result_from_execution(execution, route.task))
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
    except BaseException as exc:  # as Django's ImmediateBackend: SystemExit, cancellation...
        path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        # The task's own text may hold what no database stores (NUL, unpaired surrogates).
        trace = safe_text("".join(traceback.format_exception(exc)))
        attempts = execution.attempts
        give_up = bool(route.max_attempts and attempts >= route.max_attempts)

        def failed(run: TaskExecution) -> None:
            run.fail(path, trace)
            if give_up:
                run.give_up(_give_up_reason(attempts, route))

        outcome = _record_outcome(
            execution, route, using, "gave_up" if give_up else "failed", failed,
            f"failed ({path})", f"{path}: {safe_text(str(exc), 2000)}")
        task_finished.send(sender, task_result=result_from_execution(
            _finished_run(outcome, execution), route.task))
        if isinstance(exc, KeyboardInterrupt):
            raise  # recorded; let whoever stops the process stop it
        return outcome
    outcome = _record_outcome(execution, route, using, "ran",
                              lambda run: run.succeed(value), "succeeded", "")
    task_finished.send(sender, task_result=result_from_execution(
        _finished_run(outcome, execution), route.task))
    return outcome


def _finished_run(outcome: Outcome, attempt: TaskExecution) -> TaskExecution:
    """The run task_finished reports: as recorded, or this attempt's own outcome when the
    record is another attempt's (superseded) or could not be written (unrecorded)."""
    if outcome.kind in ("superseded", "unrecorded") or outcome.execution is None:
        return attempt
    return outcome.execution
