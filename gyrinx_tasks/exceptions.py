"""Exceptions raised by gyrinx_tasks."""

from django.core.exceptions import ImproperlyConfigured
from django.tasks.exceptions import TaskException


class RegistryError(ImproperlyConfigured):
    """The task registry named by TASKS_REGISTRY cannot be loaded."""


class UnknownTask(TaskException):
    """No route in the registry has this task name."""


class TaskPublishError(TaskException):
    """Publishing a task message to Pub/Sub failed; the run is recorded as FAILED."""


class InvalidTaskArguments(TaskException, ValueError):
    """A task's arguments cannot travel as JSON or be stored (NaN, NUL, lone surrogates)."""


class PublishNotConfirmed(Exception):
    """A publish failed after an earlier try of it may have reached Pub/Sub."""


class OIDCVerificationError(Exception):
    """A push request's OIDC token is missing or invalid."""


class TaskCancelled(TaskException):
    """Never raised: the class a cancelled run's entry in ``TaskResult.errors`` names, with
    who cancelled it and when as its ``traceback`` (gyrinx_tasks.cancel())."""
