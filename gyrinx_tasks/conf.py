"""Settings for gyrinx_tasks, read live from ``django.conf.settings``.

Each setting defaults to the environment variable of the same name, so a Cloud Run service
can be configured without touching settings.py, and ``override_settings`` works in tests.
"""

import os
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
PUSH_PATH = "/tasks/pubsub/"
# Cloud Scheduler fires within a minute or so and Pub/Sub pushes within seconds; five minutes
# leaves room for a cold start and a retried publish without hiding a job that did not fire.
DEFAULT_SCHEDULE_TOLERANCE = 300
# Pub/Sub writes its subscription metrics once a minute: reading them more often shows nothing new.
DEFAULT_BACKLOG_CACHE_SECONDS = 60
# Health (gyrinx_tasks/health.py; docs/configuration.md says why these values).
DEFAULT_HEALTH_WINDOW = 3600
DEFAULT_HEALTH_FAILURE_RATE = 0.2
DEFAULT_HEALTH_MIN_RUNS = 5
DEFAULT_HEALTH_MAX_READY_AGE = 600
# How long finished runs are kept before tasks_prune deletes them (their hourly rollups stay).
DEFAULT_RETENTION = timedelta(days=30)
# Rollups are hourly and runs are pruned by whole hours.
MIN_RETENTION = timedelta(hours=1)


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in {"", "0", "false", "no", "off"}
    return bool(value)


_UNSET = object()


def failure_rate(name: str, value: object) -> float:
    """``value`` as a share from 0 to 1 (text too: environment variables are text)."""
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(str(value))
        except ValueError:
            number = None
    if number is None or not 0.0 <= number <= 1.0:
        raise ImproperlyConfigured(
            f"{name} is {value!r}; set it to a share of finished runs from 0 to 1, such as "
            "0.2 (20 %).")
    return number


class TasksSettings:
    def _get(self, name: str, default: object = None) -> object:
        value = getattr(settings, name, _UNSET)  # one lookup: the push path reads several
        if value is _UNSET:
            return os.environ.get(name, default)
        return value

    @property
    def GCP_PROJECT_ID(self) -> str:
        return str(self._get("GCP_PROJECT_ID", "") or "")

    @property
    def CLOUD_RUN_SERVICE_URL(self) -> str:
        return str(self._get("CLOUD_RUN_SERVICE_URL", "") or "").rstrip("/")

    @property
    def TASKS_SERVICE_ACCOUNT(self) -> str:
        return str(self._get("TASKS_SERVICE_ACCOUNT", "") or "")

    @property
    def TASKS_ENVIRONMENT(self) -> str:
        return str(self._get("TASKS_ENVIRONMENT", "dev") or "dev")

    @property
    def SCHEDULER_LOCATION(self) -> str:
        return str(self._get("SCHEDULER_LOCATION", "europe-west2") or "europe-west2")

    @property
    def TASKS_REGISTRY(self) -> str:
        return str(self._get("TASKS_REGISTRY", "") or "")

    @property
    def TASKS_VERIFY_OIDC(self) -> bool:
        return _truthy(self._get("TASKS_VERIFY_OIDC", True))

    @property
    def TASKS_OIDC_AUDIENCE(self) -> str:
        """The audience push tokens carry: by default the push endpoint's own URL."""
        explicit = str(self._get("TASKS_OIDC_AUDIENCE", "") or "")
        return explicit or self.push_endpoint

    @property
    def TASKS_OIDC_CERTS_URL(self) -> str:
        return str(self._get("TASKS_OIDC_CERTS_URL", GOOGLE_CERTS_URL) or GOOGLE_CERTS_URL)

    @property
    def TASKS_PROVISION_ON_STARTUP(self) -> bool:
        return _truthy(self._get("TASKS_PROVISION_ON_STARTUP", False))

    def _positive_int(self, name: str, default: int, example: str) -> int:
        value = self._get(name, default)
        try:
            number = int(str(value))
        except ValueError:
            number = 0
        if number < 1:
            raise ImproperlyConfigured(f"{name} is {value!r}; set it to {example}.")
        return number

    @property
    def TASKS_ADMIN_RETRY_LIMIT(self) -> int:
        """The most runs one admin click may retry (a bulk retry of more is refused)."""
        return self._positive_int("TASKS_ADMIN_RETRY_LIMIT", 1000,
                                  "a positive whole number such as 1000")

    @property
    def TASKS_PUSH_MAX_BODY_BYTES(self) -> int:
        """The largest push request body read; larger ones are acknowledged and rejected."""
        from .push import DEFAULT_MAX_BODY_BYTES

        return self._positive_int(
            "TASKS_PUSH_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
            f"a positive number of bytes such as {DEFAULT_MAX_BODY_BYTES} (15 MiB, just above "
            "Pub/Sub's largest push)")

    @property
    def TASKS_SCHEDULE_TOLERANCE(self) -> int:
        """Seconds a scheduled run may arrive after its fire time and still be on time."""
        return self._positive_int("TASKS_SCHEDULE_TOLERANCE", DEFAULT_SCHEDULE_TOLERANCE,
                                  "a positive number of seconds such as 300")

    # --- Health (gyrinx_tasks/health.py) ---

    @property
    def TASKS_HEALTH_TOKEN(self) -> str:
        """The bearer token machines send to GET /tasks/health/; "" lets only staff in."""
        value = self._get("TASKS_HEALTH_TOKEN", "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ImproperlyConfigured(
                f"TASKS_HEALTH_TOKEN is a {type(value).__name__}; set it to a string.")
        return value.strip()

    @property
    def TASKS_HEALTH_WINDOW(self) -> int:
        """Seconds back from now whose runs the failure rate is worked out over."""
        return self._positive_int("TASKS_HEALTH_WINDOW", DEFAULT_HEALTH_WINDOW,
                                  "a positive number of seconds such as 3600")

    @property
    def TASKS_HEALTH_FAILURE_RATE(self) -> float:
        """A task is unhealthy when more than this share of its finished runs failed."""
        return failure_rate("TASKS_HEALTH_FAILURE_RATE",
                            self._get("TASKS_HEALTH_FAILURE_RATE", DEFAULT_HEALTH_FAILURE_RATE))

    @property
    def TASKS_HEALTH_MIN_RUNS(self) -> int:
        """Finished runs in the window before a task's failure rate is judged at all."""
        return self._positive_int("TASKS_HEALTH_MIN_RUNS", DEFAULT_HEALTH_MIN_RUNS,
                                  "a positive whole number such as 5")

    @property
    def TASKS_HEALTH_MAX_READY_AGE(self) -> int:
        """Seconds a run may wait READY before it counts as stuck."""
        return self._positive_int("TASKS_HEALTH_MAX_READY_AGE", DEFAULT_HEALTH_MAX_READY_AGE,
                                  "a positive number of seconds such as 600")

    @property
    def TASKS_HEALTH_MAIL_ADMINS(self) -> bool:
        """Whether a change of health is also mailed to ADMINS (mail_admins)."""
        return _truthy(self._get("TASKS_HEALTH_MAIL_ADMINS", False))

    @property
    def TASKS_BACKLOG_CACHE_SECONDS(self) -> int:
        """Seconds the admin keeps a backlog read from Cloud Monitoring (Django's cache)."""
        return self._positive_int("TASKS_BACKLOG_CACHE_SECONDS", DEFAULT_BACKLOG_CACHE_SECONDS,
                                  "a positive number of seconds such as 60")

    @property
    def TASKS_RETENTION(self) -> timedelta:
        """How long finished runs are kept; a route's or task's retention wins over it.

        A timedelta, or (from the environment variable) a whole number of days.
        """
        value = self._get("TASKS_RETENTION", DEFAULT_RETENTION)
        if isinstance(value, str) and value.strip().isdigit():
            value = timedelta(days=int(value))
        if not isinstance(value, timedelta) or value < MIN_RETENTION:
            raise ImproperlyConfigured(
                f"TASKS_RETENTION is {value!r}; set it to a timedelta of at least an hour such "
                "as timedelta(days=30), or its environment variable to a number of days.")
        return value

    @property
    def push_endpoint(self) -> str:
        return f"{self.CLOUD_RUN_SERVICE_URL}{PUSH_PATH}" if self.CLOUD_RUN_SERVICE_URL else ""

    @property
    def emulator_host(self) -> str:
        return os.environ.get("PUBSUB_EMULATOR_HOST", "")


tasks_settings = TasksSettings()
