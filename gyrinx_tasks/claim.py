"""The claim: find (or make) the run a delivery belongs to, and decide what the delivery does.

Either the delivery settles without running the task (a duplicate, a kill switch, arguments
that do not fit, max_attempts reached, an outcome recorded late), or the run is started: it
is RUNNING, this delivery's attempt, and the task may run. Every write is one of the model's
delivery transitions (models.TaskExecutionQuerySet): a conditional UPDATE on the state read.
"""

import logging
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, OperationalError, connections, router, transaction
from django.utils import timezone

from . import record
from .killswitch import kill_switch_state
from .messages import (
    RECORDED_ATTRIBUTE,
    REQUESTED_BY_ATTRIBUTE,
    REQUESTED_BY_LIMIT,
    TRIGGER_ATTRIBUTE,
)
from .models import State, SwitchMode, TaskExecution, Trigger
from .outcomes import Outcome, OutcomeKind
from .push import MAX_MESSAGE_ID, Delivery, MalformedPush, safe_text
from .statements import select_run
from .workers import current_worker_id

logger = logging.getLogger("gyrinx_tasks")

# How long a claim waits on PostgreSQL for a row lock or for another transaction's insert of
# the same run (an enqueue not committed yet) before answering "busy". Claims hold their locks
# for a few queries only, so this is only reached when some other transaction stays open.
LOCK_TIMEOUT_MS = 2000
# A message our backend published after recording its run, whose row is still not visible
# this long after enqueued_at, is checked: if the enqueue's transaction rolled back, the
# delivery is rejected; if it is still open, the delivery waits (busy) for as long as it is.
UNCOMMITTED_GRACE = timedelta(hours=1)
# The longest result id (TaskExecution.result_id): a longer task id names no run of ours.
MAX_RESULT_ID = 64


class Raced(Exception):
    """The run changed between the unlocked read and the write: decide again, locked."""


def using() -> str:
    # Every query of a delivery goes to the database the routers pick for writing runs, so
    # its locks, transactions and writes are all on one connection.
    return router.db_for_write(TaskExecution)


def runs(db: str) -> Any:
    return TaskExecution.objects.using(db)


def write(execution: TaskExecution, db: str) -> None:
    """Write a transition made on a run read under its lock (it cannot have changed)."""
    if not runs(db).write_transition(execution):
        raise Raced


def trigger_of(delivery: Delivery | None) -> str:
    value = delivery.attributes.get(TRIGGER_ATTRIBUTE, "") if delivery else ""
    if value in Trigger.values:
        return value
    return Trigger.SCHEDULE if delivery and delivery.is_scheduled else Trigger.ENQUEUE


def record_rejection(reason: str, raw_message: str, exc: MalformedPush | None = None,
                     delivery: Delivery | None = None,
                     fresh_row: bool = False) -> TaskExecution:
    """Keep a rejected delivery as a REJECTED run, with the raw message, and log it.

    ``fresh_row``: never settle the run the message's task id names (its enqueue rolled back;
    its id stays free).
    """
    return _record_rejection(reason, raw_message, exc, delivery, fresh_row)[0]


def _record_rejection(reason: str, raw_message: str, exc: MalformedPush | None = None,
                      delivery: Delivery | None = None,
                      fresh_row: bool = False) -> tuple[TaskExecution, bool]:
    """record_rejection(), and whether this delivery settled the run (False: it was settled
    already, by an earlier delivery of the same message)."""
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
    db = using()
    with transaction.atomic(using=db):
        locked = runs(db).select_for_update()
        execution = None
        if task_id and not task_id.startswith("scheduled-") and not fresh_row:
            execution = locked.filter(result_id=task_id).first()
        if execution is None and message_id:
            # Message ids are unique within a topic only; the task name stands for the topic.
            execution = locked.filter(task_name=task_name, message_id=message_id).first()
        if execution is None:
            execution = TaskExecution(task_id=task_id, task_name=task_name,
                                      message_id=message_id, trigger=trigger_of(delivery))
            if delivery:
                execution.args, execution.kwargs = delivery.args, delivery.kwargs
            execution.reject(reason, raw_message)
            return runs(db).create_run(execution), True
        if execution.settled:
            return execution, False  # already settled; a duplicate delivery changes nothing
        execution.remember_progress()
        execution.reject(reason, raw_message)
        write(execution, db)
    return execution, True


def read_run(delivery: Delivery, route: Any, db: str) -> TaskExecution | None:
    """The delivery's run, with its task's kill switch read in the same statement.

    FOR UPDATE NOWAIT: in a transaction it locks the row; either way a row another
    transaction holds locked answers "busy" at once (Pub/Sub retries) rather than making this
    request wait for that transaction.
    """
    execution = None
    if not delivery.is_scheduled:
        execution = select_run(db, "result_id", delivery.task_id, lock=True,
                               switch_for=route.name)
    if execution is None:
        # Scheduled messages share a task id per job: each delivery is its own run, known by
        # its message id within its topic.
        execution = select_run(db, "message_id", delivery.message_id, lock=True,
                               switch_for=route.name, task_name=route.name)
    return None if execution is None else execution.remember_progress()


def _new_run(delivery: Delivery, route: Any) -> TaskExecution:
    """The run of a message nobody recorded: a scheduled firing, or another producer's."""
    execution = TaskExecution(
        task_id=delivery.task_id, task_name=route.name, task_path=route.path,
        message_id=delivery.message_id, trigger=trigger_of(delivery),
        args=delivery.args, kwargs=delivery.kwargs, queue_name=route.task.queue_name,
        enqueued_at=delivery.enqueued_at or timezone.now(),
    )
    if not delivery.is_scheduled and len(delivery.task_id) <= MAX_RESULT_ID:
        execution.result_id = delivery.task_id
    note = f"delivered as message {delivery.message_id}"
    requested_by = delivery.attributes.get(REQUESTED_BY_ATTRIBUTE, "")[:REQUESTED_BY_LIMIT]
    if requested_by:  # Run now from the admin: say who, since the run has no user field
        note += f"; run now by {requested_by}"
    execution._log("", State.READY, note)
    return execution


def bound_lock_waits(db: str) -> None:
    """On PostgreSQL, let this transaction wait LOCK_TIMEOUT_MS at most for any lock."""
    connection = connections[db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)",
                           [f"{LOCK_TIMEOUT_MS}ms"])


def lock_not_available(exc: BaseException) -> bool:
    # PostgreSQL's lock_not_available (55P03), raised when lock_timeout expires.
    return getattr(exc.__cause__, "sqlstate", None) == "55P03"


def claim(delivery: Delivery, route: Any, problem: str, raw_message: str
          ) -> TaskExecution | Outcome:
    """The started run (RUNNING, this delivery's attempt), or how the delivery settled.

    The usual delivery (its run recorded before publishing) is decided without a
    transaction: one statement reads the run with its kill switch, one conditional UPDATE
    writes the decision. A first scheduled delivery, or a run that changed between the read
    and the write, is decided again in a transaction, under the row's lock.
    """
    db = using()
    try:
        decided = None
        if not delivery.is_scheduled:
            execution = read_run(delivery, route, db)
            if execution is not None:
                try:
                    decided = decide(execution, delivery, route, problem, raw_message, db)
                except Raced:
                    decided = None
        if decided is None:
            with transaction.atomic(using=db):
                decided = _claim_locked(delivery, route, problem, raw_message, db)
    except IntegrityError:
        # Another transaction inserted this run first: an enqueue that committed while this
        # claim waited, or a duplicate delivery racing this one. Pub/Sub retries.
        return Outcome(OutcomeKind.BUSY, None,
                       "This run is being recorded elsewhere; retry later.")
    except OperationalError as exc:
        if not lock_not_available(exc):
            raise
        return Outcome(OutcomeKind.BUSY, None, (
            "Another transaction holds this run (an enqueue not committed yet, or a duplicate "
            "delivery); retry later."))
    if decided is None:
        return uncommitted(delivery, route, raw_message, db)
    return decided


def _claim_locked(delivery: Delivery, route: Any, problem: str, raw_message: str,
                  db: str) -> TaskExecution | Outcome | None:
    """In a transaction: find the run locked, or make it. None when the message says its run
    was recorded before publishing (our backend's enqueue) but no such row is visible."""
    execution = read_run(delivery, route, db)
    if execution is None and delivery.attributes.get(RECORDED_ATTRIBUTE):
        return None  # never insert it ourselves: that would run a rolled-back enqueue
    if execution is None:
        # On PostgreSQL this insert waits (LOCK_TIMEOUT_MS at most) while another transaction
        # holds an uncommitted row of the same id; then IntegrityError or LockNotAvailable.
        bound_lock_waits(db)
        execution = runs(db).create_run(_new_run(delivery, route))
    return decide(execution, delivery, route, problem, raw_message, db)


class _Probed(Exception):
    """Raised to roll back a probe's insert once it went through."""


def uncommitted(delivery: Delivery, route: Any, raw_message: str, db: str) -> Outcome:
    """The delivery's recorded run is not visible: its enqueue has not committed yet, or it
    rolled back. Told apart by inserting a row of the run's id, then rolling it back: the
    insert waits for a transaction that holds an uncommitted row of that id (still open:
    busy), and goes through only once no transaction can commit one (rolled back)."""
    waiting = Outcome(OutcomeKind.BUSY, None, (
        "The run's row is not committed yet (the enqueue's transaction is still open); "
        "retry later."))
    enqueued_at = delivery.enqueued_at
    if enqueued_at is not None and timezone.now() - enqueued_at < UNCOMMITTED_GRACE:
        return waiting
    if len(delivery.task_id) <= MAX_RESULT_ID:
        probe = TaskExecution(result_id=delivery.task_id, task_name=route.name,
                              status=State.REJECTED)
        try:
            with transaction.atomic(using=db):
                bound_lock_waits(db)
                runs(db).create_run(probe)
                raise _Probed
        except _Probed:
            pass  # rolled back: the id stays free, as it was
        except IntegrityError:
            return Outcome(OutcomeKind.BUSY, None, (
                "The run's row committed just now; its next delivery runs it."))
        except OperationalError as exc:
            if lock_not_available(exc) or connections[db].vendor == "sqlite":
                # PostgreSQL waited for the enqueue's uncommitted row; SQLite for its writer.
                return waiting
            raise
    reason = (f"The run {delivery.task_id} does not exist {UNCOMMITTED_GRACE} after "
              "enqueued_at: the transaction that enqueued it rolled back (or the run was "
              "deleted), so it is not run.")
    execution, created = _record_rejection(reason, raw_message, delivery=delivery,
                                           fresh_row=True)
    if not created:
        return Outcome(OutcomeKind.DUPLICATE, execution, f"Run already {execution.status}.")
    return Outcome(OutcomeKind.REJECTED, execution, reason)


def lost_attempt_note(execution: TaskExecution, route: Any) -> str:
    return (f"attempt {execution.attempts} recorded no outcome within the ack deadline "
            f"({route.ack_deadline} s): its worker stopped, was cut off, or could not reach "
            "the database; presumed lost")


def give_up_reason(attempts: int, limit: int | None) -> str:
    return (f"Gave up after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"(the route's max_attempts is {limit}); Pub/Sub is not asked to "
            "deliver it again. Retry it from the admin once the cause is fixed.")


def max_attempts(route: Any) -> int | None:
    """The route's max_attempts, else the task's own (@task(max_attempts=...))."""
    return route.max_attempts or getattr(route.task, "max_attempts", None)


# The timeline note of a cancelled run's acknowledged delivery; written once, not again for
# each redelivery of the same message.
CANCELLED_ACK_NOTE = "delivery acknowledged without running: the run was cancelled"


def acknowledge_cancelled(execution: TaskExecution, delivery: Delivery, db: str) -> Outcome:
    """A delivery of a cancelled run: acknowledged unrun, and noted once on the run (so its
    page shows that Pub/Sub no longer holds the message)."""
    last = execution.timeline[-1] if execution.timeline else {}
    if not (isinstance(last, dict) and str(last.get("note", "")).startswith(
            CANCELLED_ACK_NOTE)):
        execution.note(f"{CANCELLED_ACK_NOTE} (message {delivery.message_id})")
        write(execution, db)
    logger.info("Acknowledged a delivery of cancelled run %s (%s) unrun",
                execution.result_id, execution.task_name)
    return Outcome(OutcomeKind.CANCELLED, execution,
                   execution.status_detail or "The run was cancelled; the task is not run.")


def decide(execution: TaskExecution, delivery: Delivery, route: Any, problem: str,
           raw_message: str, db: str) -> TaskExecution | Outcome:
    """Settle the delivery on the run as read, or start it; each write a conditional UPDATE
    (Raced if the run changed since it was read)."""
    if not execution.message_id:
        execution.message_id = delivery.message_id
    if execution.status == State.CANCELLED:
        return acknowledge_cancelled(execution, delivery, db)
    if execution.settled:
        return Outcome(OutcomeKind.DUPLICATE, execution, f"Run already {execution.status}.")
    if execution.status == State.RUNNING:
        late = record.recall(execution)
        if late is not None:
            # This process ran the attempt but the database refused its outcome: record it
            # now rather than run the task again. Forgotten only once it is written.
            late.apply(execution)
            execution.note(f"attempt {execution.attempts}'s outcome recorded late, on a "
                           "redelivery, after a database failure")
            write(execution, db)
            record.forget(late)
            return Outcome(late.kind, execution,
                           "The outcome of an earlier attempt, recorded late.")
    if execution.status == State.RUNNING and execution.last_attempted_at and (
        timezone.now() - execution.last_attempted_at < timedelta(seconds=route.ack_deadline)
    ):
        return Outcome(OutcomeKind.BUSY, execution,
                       "This run is still running on another worker.")
    if problem:
        execution.reject(problem, raw_message)
        write(execution, db)
        logger.error("Rejected Pub/Sub delivery %s: %s", delivery.message_id, problem)
        return Outcome(OutcomeKind.REJECTED, execution, problem)
    mode, reason = kill_switch_state(route, execution)
    if mode == SwitchMode.HOLD:
        # Leave the run as it is (READY, FAILED, or RUNNING from a worker that died) and
        # write nothing: a held message is redelivered for days, and each redelivery must not
        # grow its row. Not acknowledging is what keeps the message in Pub/Sub.
        logger.info("Held %s (%s): %s", route.name, execution.result_id, reason)
        return Outcome(OutcomeKind.HELD, execution, reason)
    limit = max_attempts(route)
    next_attempt = max(execution.attempts + 1, delivery.delivery_attempt or 0)
    if reason or (limit and next_attempt > limit):
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
            write(execution, db)
            logger.warning("Skipped %s (%s): %s", route.name, execution.result_id, reason)
            return Outcome(OutcomeKind.SKIPPED, execution, reason)
        gave_up = give_up_reason(execution.attempts, limit)
        execution.give_up(gave_up)
        write(execution, db)
        logger.error("Gave up %s (%s): %s", route.name, execution.result_id, gave_up)
        return Outcome(OutcomeKind.GAVE_UP, execution, gave_up)
    if execution.status == State.RUNNING:
        execution.note(lost_attempt_note(execution, route))
    execution.start(current_worker_id(), delivery.delivery_attempt)
    write(execution, db)
    return execution
