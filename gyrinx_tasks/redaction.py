"""Redaction of the payload (args, kwargs, return value) of routes with ``redact=True``.

Such runs keep their payload in the database, since the task needs it, but the admin and
the exports show REDACTED in its place unless the user holds PAYLOAD_PERMISSION. The
delivery path never logs a payload, redacted or not.
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


class _Everything(frozenset):
    """Stands for every task name: used when the registry cannot be read."""

    def __contains__(self, item: object) -> bool:
        return True

    def __bool__(self) -> bool:  # an empty frozenset underneath, but it holds every name
        return True


def redacted_routes() -> tuple[Any, ...] | None:
    """The routes with ``redact=True``, or None if the registry cannot be loaded."""
    from .registry import get_routes

    try:
        return tuple(route for route in get_routes() if route.redact)
    except RegistryError:
        return None


def redacted_task_names() -> frozenset[str]:
    """Names of the routes whose payload is redacted.

    Every name, if the registry cannot be loaded: not knowing which tasks carry personal
    data must not reveal it.
    """
    routes = redacted_routes()
    if routes is None:
        return _Everything()
    return frozenset(route.name for route in routes)


def can_view_payload(user: Any) -> bool:
    """Whether ``user`` may see the payload of redacted runs (superusers may)."""
    return bool(user is not None and user.is_active and user.has_perm(PAYLOAD_PERMISSION))


def is_redacted(task_name: str, user: Any = None) -> bool:
    """Whether the payload of a run of ``task_name`` must be hidden from ``user``."""
    if user is not None and can_view_payload(user):
        return False
    return task_name in redacted_task_names()


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
