"""PubSubTask: the Task class PubSubBackend makes for ``@task(...)``.

Django 6.1 hands every keyword ``@task`` does not know itself to the backend's
``task_class``. The options that belong to a task rather than its route are
``max_attempts``, ``retention`` and the health thresholds ``health_failure_rate`` and
``health_max_ready_age``; anything else is kept and refused by system check
gyrinx_tasks.E017 with a hint, so a typo is reported by ``manage.py check`` rather than as a
TypeError at import.
"""

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from django.tasks import Task

# What @task(...) takes on PubSubBackend beyond Django's own options.
TASK_OPTIONS = ("max_attempts", "retention", "health_failure_rate", "health_max_ready_age")


# django-stubs declares Task unfrozen; at run time it is frozen, as this must be.
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class PubSubTask(Task):  # type: ignore[misc]
    """A Task with the options of TASK_OPTIONS, and the unknown ones for the check."""

    # Attempts before a run gives up (FAILED for good); the route's max_attempts, if set,
    # wins. None: retried for as long as Pub/Sub keeps the message.
    max_attempts: int | None = None
    # How long finished runs are kept; the route's retention, if set, wins. None: the
    # TASKS_RETENTION setting.
    retention: timedelta | None = None
    # Health thresholds (gyrinx_tasks/health.py); the route's own, if set, win.
    health_failure_rate: float | None = None
    health_max_ready_age: int | None = None
    unknown_options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, *, max_attempts: int | None = None, retention: timedelta | None = None,
                 health_failure_rate: float | None = None,
                 health_max_ready_age: int | None = None,
                 unknown_options: tuple[tuple[str, Any], ...] = (), **options: Any) -> None:
        own = {f.name for f in fields(Task)}
        unknown = tuple(sorted((k, v) for k, v in options.items() if k not in own))
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "retention", retention)
        object.__setattr__(self, "health_failure_rate", health_failure_rate)
        object.__setattr__(self, "health_max_ready_age", health_max_ready_age)
        object.__setattr__(self, "unknown_options", unknown_options + unknown)
        # Task's generated __init__ sets its fields and validates the task (__post_init__).
        Task.__init__(self, **{k: v for k, v in options.items() if k in own})
