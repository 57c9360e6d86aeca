"""Redaction of the payload (args, kwargs, return value) of routes with ``redact=True``.

Such runs keep their payload in the database, since the task needs it, but the admin and
the exports show REDACTED in its place unless the user holds PAYLOAD_PERMISSION. Runs of no
route in the registry (name missing, unknown, renamed or removed) are redacted too: whether
their payload is personal data cannot be known. The delivery path never logs a payload,
redacted or not.
"""

import logging
from typing import Any

from .exceptions import RegistryError

PAYLOAD_PERMISSION = "gyrinx_tasks.view_payload_taskexecution"
# What an export cell or the admin shows instead of a redacted value.
REDACTED = "[redacted]"
REDACTED_NOTE = (
    "[redacted] This task's route has redact=True: its arguments and result are kept for the "
    "run but shown only to users with the permission \"Can see arguments and results of "
    "redacted tasks\"."
)
_PERMISSION_SENTENCE = (
    "shown only to users with the permission \"Can see arguments and results of redacted "
    "tasks\"."
)
REDACTED_UNKNOWN_NOTE = (
    "[redacted] This run's task is not in TASKS_REGISTRY (its name is missing, or its route "
    "was renamed or removed), so whether its arguments and result hold personal data is "
    f"unknown: they are {_PERMISSION_SENTENCE}"
)
REDACTED_UNREADABLE_NOTE = (
    "[redacted] TASKS_REGISTRY cannot be loaded, so no run's arguments and result are known "
    f"to be free of personal data: they are {_PERMISSION_SENTENCE}"
)


def redacted_routes() -> tuple[Any, ...] | None:
    """The routes with ``redact=True``, or None if the registry cannot be loaded."""
    from .registry import get_routes

    try:
        return tuple(route for route in get_routes() if route.redact)
    except RegistryError:
        return None


def shown_task_names() -> frozenset[str]:
    """Names of the registry's routes without ``redact=True``: the only runs whose payload
    everyone who may see the run may see.

    The list is of what may be shown, not of what is hidden, so redaction fails closed: a run
    whose task name is missing (rejected before its name was read), unknown, or of a route
    since renamed or removed is redacted, and so is every run while the registry cannot be
    loaded. Whether such a run carries personal data cannot be known.
    """
    from .registry import get_routes

    try:
        routes = get_routes()
    except RegistryError:
        return frozenset()
    redacted = {route.name for route in routes if route.redact}
    # A name shared by a redacted and a plain route stays redacted.
    return frozenset(route.name for route in routes if route.name not in redacted)


def can_view_payload(user: Any) -> bool:
    """Whether ``user`` may see the payload of redacted runs (superusers may)."""
    return bool(user is not None and user.is_active and user.has_perm(PAYLOAD_PERMISSION))


def is_redacted(task_name: str | None, user: Any = None) -> bool:
    """Whether the payload of a run of ``task_name`` must be hidden from ``user``."""
    if user is not None and can_view_payload(user):
        return False
    return task_name not in shown_task_names()


def redaction_note(task_name: str | None) -> str:
    """What the run page shows in place of a redacted value, saying why it is hidden."""
    from .registry import get_routes

    try:
        known = {route.name for route in get_routes()}
    except RegistryError:
        return REDACTED_UNREADABLE_NOTE
    return REDACTED_NOTE if task_name in known else REDACTED_UNKNOWN_NOTE


class RedactedTaskLogFilter(logging.Filter):
    """Drops the exception of a failed redacted task from Django's "django.tasks" log record.

    Django logs every failed task at ERROR with the exception and its traceback, whose message
    often quotes the arguments ("no account for alice@example.com"). For redacted routes the
    record keeps its text (id, path, state) and loses the exception; the run's own page still
    has the traceback, for users allowed to see it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.args, tuple) and len(record.args) >= 2:
            routes = redacted_routes()
            paths = None if routes is None else {route.path for route in routes}
            if paths is None or record.args[1] in paths:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} (exception not logged: the route has redact=True)"
        return True


def install_log_filter() -> None:
    """Attach RedactedTaskLogFilter to the "django.tasks" logger (once; from AppConfig.ready)."""
    logger = logging.getLogger("django.tasks")
    if not any(isinstance(f, RedactedTaskLogFilter) for f in logger.filters):
        logger.addFilter(RedactedTaskLogFilter())
