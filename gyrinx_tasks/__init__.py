"""Django 6 background tasks on Google Cloud Pub/Sub and Cloud Scheduler."""

from typing import TYPE_CHECKING, Any

from .routes import TaskRoute

if TYPE_CHECKING:
    from .cancellation import Cancellation

__all__ = ["TaskRoute", "cancel"]


def cancel(result_id: Any, *, by: str = "") -> "Cancellation":
    """Cancel the READY run with this result id (or TaskResult): its task never runs.

    Returns a Cancellation (``cancelled``, the run's ``status``, a ``detail`` sentence);
    a run that is RUNNING or has ended is not cancelled, and the detail says why. Raises
    django.tasks.exceptions.TaskResultDoesNotExist for an unknown id. See
    gyrinx_tasks/cancellation.py.
    """
    from .cancellation import cancel as cancel_by_id

    return cancel_by_id(result_id, by=by)
