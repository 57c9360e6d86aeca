"""Recording an attempt's outcome on its run, and remembering one the database refused.

An outcome is written with one conditional UPDATE on the run as this attempt left it
(RUNNING, this attempt, the same timeline). If the run moved on meanwhile (the ack deadline
passed and a newer delivery started it again), this attempt's outcome is only noted in the
run's timeline: the newer attempt's record stands.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, router, transaction

from .models import State, TaskExecution
from .outcomes import Outcome, OutcomeKind
from .push import safe_text

logger = logging.getLogger("gyrinx_tasks")

# Outcomes of tasks that ran but could not be recorded (the database failed), by (run pk,
# attempt): a redelivery to this process records them instead of running the task again.
UNRECORDED_LIMIT = 200  # each holds a return value, so a bounded few
_unrecorded: "OrderedDict[tuple[int, int], Late]" = OrderedDict()
_unrecorded_lock = threading.Lock()


@dataclass(frozen=True)
class Late:
    """An attempt's outcome that the database refused: ``apply`` makes it on a run."""

    key: tuple[int, int]
    kind: OutcomeKind
    apply: Callable[[TaskExecution], None]


def remember(key: tuple[int, int], kind: OutcomeKind,
             apply: Callable[[TaskExecution], None]) -> None:
    with _unrecorded_lock:
        _unrecorded[key] = Late(key, kind, apply)
        while len(_unrecorded) > UNRECORDED_LIMIT:
            _unrecorded.popitem(last=False)


def recall(execution: TaskExecution) -> Late | None:
    """The outcome this process remembers for the run's current attempt, if any. It stays
    remembered until forget(): a write of it that fails must not lose it."""
    with _unrecorded_lock:
        return _unrecorded.get((execution.pk, execution.attempts))


def forget(late: Late) -> None:
    with _unrecorded_lock:
        if _unrecorded.get(late.key) is late:
            del _unrecorded[late.key]


def clear() -> None:
    with _unrecorded_lock:
        _unrecorded.clear()


def _clone(execution: TaskExecution) -> TaskExecution:
    """A shallow copy of the run (as copy.copy, without its generic pickling machinery)."""
    clone = TaskExecution.__new__(TaskExecution)
    clone.__dict__.update(execution.__getstate__())
    return clone


def _finish(execution: TaskExecution, db: str, apply: Callable[[TaskExecution], None],
            what: str) -> tuple[TaskExecution, bool]:
    """Record this attempt's outcome if the run is still this attempt's; return (row, won)."""
    attempt = execution.attempts
    runs = TaskExecution.objects.using(db)
    # First the conditional UPDATE on the run as this delivery left it. Nearly always it
    # wins, in one statement and no lock.
    candidate = _clone(execution)
    apply(candidate)
    if runs.write_transition(candidate):
        return candidate, True
    # Otherwise read the row under a lock and decide on what it holds now.
    with transaction.atomic(using=db):
        current = runs.select_for_update().filter(pk=execution.pk).first()
        if current is None:  # deleted meanwhile (by staff): nothing to record
            return execution, False
        current.remember_progress()
        if current.status == State.RUNNING and current.attempts == attempt:
            apply(current)
            won = runs.write_transition(current)
            return current, won
        current.note(f"attempt {attempt} {what} after it was superseded "
                     f"({superseded_by(current, attempt)}); its outcome is not the run's")
        runs.write_transition(current)
        return current, False


def superseded_by(current: TaskExecution, attempt: int) -> str:
    """What made ``attempt``'s outcome not the run's, as the run now holds it."""
    if current.attempts == attempt and current.status != State.RUNNING:
        # Not started again: settled while the attempt ran, e.g. given up as lost by staff
        # and retried (abandon.py); the detail says by whom and as which run.
        return (f"the run was settled meanwhile, now {current.status}, attempt "
                f"{current.attempts}: {current.status_detail}")
    return f"the run is now {current.status}, attempt {current.attempts}"


def record_outcome(execution: TaskExecution, route: Any, kind: OutcomeKind,
                   apply: Callable[[TaskExecution], None], what: str,
                   detail: str) -> Outcome:
    """Write an attempt's outcome; the Outcome says whether it is the run's.

    ``execution`` is the run as started; ``apply`` makes the outcome's transition on a run.
    """
    db = router.db_for_write(TaskExecution, instance=execution)  # where the claim wrote it
    attempt = execution.attempts
    try:
        try:
            current, won = _finish(execution, db, apply, what)
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as exc:
            # The outcome itself cannot be stored (a value the database refuses): record the
            # attempt as failed with that reason, which can always be stored.
            path = f"{type(exc).__module__}.{type(exc).__qualname__}"
            reason = safe_text(f"The task {what}, but its outcome could not be stored: {exc}")
            kind, detail, what = OutcomeKind.FAILED, reason, f"{what} (outcome not storable)"

            def apply(run: TaskExecution) -> None:
                run.fail(path, reason)

            current, won = _finish(execution, db, apply, what)
    except (OperationalError, InterfaceError) as exc:
        # The task ran but its outcome could not be written. At-least-once: the run stays
        # RUNNING; a redelivery to this process records the outcome remembered here, and
        # elsewhere the task runs again once the ack deadline has passed.
        remember((execution.pk, attempt), kind, apply)
        logger.error("Task %s (%s) attempt %s %s, but the database refused its outcome: %s",
                     route.name, execution.result_id, attempt, what, exc)
        return Outcome(OutcomeKind.UNRECORDED, execution, (
            f"The task ran and {what}, but its outcome could not be recorded (the database "
            f"failed: {safe_text(str(exc), 300)}). The run stays RUNNING: a redelivery "
            f"records the outcome if it reaches this instance, else the task runs again after "
            f"the ack deadline ({route.ack_deadline} s)."))
    if not won:
        if current.attempts == attempt and current.status != State.RUNNING:
            # Given up as lost while it ran (abandon.py): the task may have run twice, once
            # here and once as the retry. Said at WARNING, so it is seen.
            logger.warning("Task %s (%s) attempt %s %s after the run was settled without it "
                           "(%s): its outcome is only noted on the run", route.name,
                           execution.result_id, attempt, what, current.status_detail)
            return Outcome(OutcomeKind.SUPERSEDED, current, (
                f"Attempt {attempt} {what}, but the run was settled meanwhile (now "
                f"{current.status}: {current.status_detail}); this outcome is only noted in "
                "its timeline."))
        return Outcome(OutcomeKind.SUPERSEDED, current, (
            f"Attempt {attempt} {what}, but the run was started again meanwhile (attempt "
            f"{current.attempts}, now {current.status}); the newer attempt's record stands and "
            "this outcome is noted in its timeline."))
    return Outcome(kind, current, detail)
