"""TaskRoute: one registry entry, and the naming rules for its GCP resources."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .conf import tasks_settings


def topic_name_for(path: str, environment: str | None = None) -> str:
    env = environment or tasks_settings.TASKS_ENVIRONMENT
    return f"{env}--gyrinx.tasks--{path}"


def scheduler_job_prefix(environment: str | None = None) -> str:
    env = environment or tasks_settings.TASKS_ENVIRONMENT
    return f"{env}--gyrinx-scheduler--"


@dataclass(frozen=True)
class TaskRoute:
    """A task the registry routes through Pub/Sub, optionally on a cron schedule."""

    func: Callable[..., Any]
    ack_deadline: int = 300
    min_retry_delay: int = 10
    max_retry_delay: int = 600
    schedule: str | None = None
    schedule_timezone: str = "UTC"
    # Optional extras.
    enabled_env_var: str | None = None  # e.g. "ENABLE_BACKFILL_SCHEDULER"; "false" turns it off
    dead_letter_topic: str | None = None  # topic id in the same project
    max_delivery_attempts: int = 5  # only used with dead_letter_topic (Pub/Sub allows 5-100)
    schedule_retry_count: int = 0  # Cloud Scheduler retries of a failed publish
    # Attempts before the run is given up (FAILED for good, delivery acknowledged); None
    # retries for as long as Pub/Sub keeps the message. Counts Pub/Sub's deliveryAttempt when
    # the subscription has a dead-letter policy, else the runs' own attempts.
    max_attempts: int | None = None
    # The task carries personal data: its args, kwargs and return value are stored for the
    # run but shown as redacted in the admin and exports (gyrinx_tasks/redaction.py).
    redact: bool = False
    # Seconds a scheduled run may arrive after its fire time and still count as on time in
    # schedule health; None uses the TASKS_SCHEDULE_TOLERANCE setting.
    schedule_tolerance: int | None = None
    # Health thresholds (gyrinx_tasks/health.py); None uses @task(...)'s option of the same
    # name, else the TASKS_HEALTH_FAILURE_RATE / TASKS_HEALTH_MAX_READY_AGE setting.
    health_failure_rate: float | None = None  # a share from 0 to 1
    health_max_ready_age: int | None = None  # seconds
    # How long the task's finished runs are kept before tasks_prune deletes them; None uses
    # the task's @task(retention=...), else the TASKS_RETENTION setting (gyrinx_tasks/prune.py).
    retention: timedelta | None = None

    @property
    def task(self) -> Any:
        """The Django ``Task`` this route runs (the ``func`` given, when it is one)."""
        return self.func

    @property
    def name(self) -> str:
        return getattr(self.func, "name", None) or self.func.__name__

    @property
    def path(self) -> str:
        module_path = getattr(self.func, "module_path", None)
        if module_path:
            return module_path
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @property
    def topic_name(self) -> str:
        return topic_name_for(self.path)

    @property
    def subscription_name(self) -> str:
        return f"{self.topic_name}-sub"

    @property
    def scheduler_job_name(self) -> str | None:
        if not self.is_scheduled:
            return None
        return scheduler_job_prefix() + self.path.replace(".", "-")

    @property
    def is_scheduled(self) -> bool:
        return bool(self.schedule)

    @property
    def scheduled_task_id(self) -> str:
        """The fixed task id that every scheduled message of this route carries."""
        return f"scheduled-{self.scheduler_job_name or self.path}"

    def env_switch_enabled(self) -> bool:
        """False when the route's environment-variable kill switch is set to a false value."""
        from .killswitch import env_switch_enabled  # models are not loaded at import

        return env_switch_enabled(self.enabled_env_var)
