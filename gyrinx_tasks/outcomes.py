"""What happened to a push delivery: the kinds the runner reports and the view answers."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    """Each kind has exactly one HTTP status, in views.STATUS_FOR."""

    RAN = "ran"  # the task ran and returned; the run is SUCCESSFUL
    FAILED = "failed"  # the task raised and has attempts left: Pub/Sub retries
    GAVE_UP = "gave_up"  # the task raised on its last allowed attempt; FAILED for good
    REJECTED = "rejected"  # the message can never run (malformed, unknown task, bad args)
    SKIPPED = "skipped"  # a kill switch is off (skip): acknowledged unrun
    HELD = "held"  # a kill switch is off (hold): left in Pub/Sub
    DUPLICATE = "duplicate"  # a redelivery of a run that already ended
    # staff (or gyrinx_tasks.cancel()) cancelled the READY run: acknowledged unrun. Not an
    # end of the run: it ended when it was cancelled, and task_finished was sent then.
    CANCELLED = "cancelled"
    BUSY = "busy"  # the run is running elsewhere, or its enqueue has not committed yet
    SUPERSEDED = "superseded"  # this attempt outlived its ack deadline and was started again
    UNRECORDED = "unrecorded"  # the task ran but the database refused its outcome
    LENGTH_REQUIRED = "length_required"  # a chunked body this WSGI server cannot read

    @property
    def ends_the_run(self) -> bool:
        """Whether a run that reaches this outcome has ended (Django's task_finished)."""
        return self in (OutcomeKind.RAN, OutcomeKind.GAVE_UP, OutcomeKind.REJECTED,
                        OutcomeKind.SKIPPED)


@dataclass(frozen=True)
class Outcome:
    """What happened to a delivery; the view maps its kind to an HTTP status."""

    kind: OutcomeKind
    execution: Any  # the TaskExecution, or None when no run is known
    detail: str = ""
