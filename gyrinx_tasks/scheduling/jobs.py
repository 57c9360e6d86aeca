"""Run, pause, resume and read a scheduled route's Cloud Scheduler job (or run it locally).

These are the calls staff make on a job that exists; creating, changing and deleting jobs to
match the registry is provisioning's (``gyrinx_tasks.provisioning``).
"""

from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions

from ..backend import PubSubBackend
from ..conf import tasks_settings
from ..models import Trigger
from ..provisioning.config import DOCS, ProvisioningConfig, ProvisioningError, default_project
from ..provisioning.core import Clients
from ..provisioning.scheduler import job_state
from ..routes import TaskRoute
from .firing import fire_scheduled


@dataclass(frozen=True)
class RunNowResult:
    via: str  # "cloud-scheduler" or "local"
    ident: str  # the job's name, or the message id / result id of the local run
    message: str  # a sentence for the admin to show

    def __str__(self) -> str:
        return self.message


def uses_cloud_scheduler(route: TaskRoute) -> bool:
    """False against the emulator or when the route's backend is not Pub/Sub (local mode)."""
    if tasks_settings.emulator_host:
        return False
    backend = route.task.get_backend()
    return isinstance(backend, PubSubBackend) and bool(backend.project_id)


def job_name(route: TaskRoute, config: ProvisioningConfig | None = None) -> str:
    _require_schedule(route)
    if config is not None:
        return config.job_path(route.scheduler_job_name or "")
    parent = f"projects/{default_project()}/locations/{tasks_settings.SCHEDULER_LOCATION}"
    return f"{parent}/jobs/{route.scheduler_job_name}"


def run_now(route: TaskRoute, *, scheduler: Any = None,
            config: ProvisioningConfig | None = None, requested_by: str = "") -> RunNowResult:
    """Fire a scheduled route now, recorded with the run-now trigger and who asked.

    The scheduled message is published straight to the route's topic (or, without Pub/Sub,
    run through the route's backend) with attributes ``trigger=run_now`` and
    ``requested_by``. Cloud Scheduler's RunJob is not used by default: it sends the job's
    fixed message, whose attributes say ``schedule``, so a manual run would be recorded as a
    scheduled one, with nobody's name on it. Pass a ``scheduler`` client to call RunJob anyway
    (it exercises the job itself; the run is then recorded as ``schedule``).
    """
    name = job_name(route, config)
    if scheduler is not None:
        _call(scheduler, "run_job", name, config)
        return RunNowResult(
            "cloud-scheduler", name,
            f"Cloud Scheduler is running job {name.rsplit('/', 1)[-1]} now; the run is "
            "recorded when Pub/Sub delivers it.",
        )
    ident = fire_scheduled(route, Trigger.RUN_NOW, requested_by=requested_by)
    if not uses_cloud_scheduler(route):
        backend = route.task.get_backend()
        if isinstance(backend, PubSubBackend):
            return RunNowResult(
                "local", ident,
                f"Published {route.name}'s scheduled message to the Pub/Sub emulator now "
                f"(Pub/Sub message id {ident}); the run is recorded when the emulator "
                "delivers it.",
            )
        return RunNowResult(
            "local", ident,
            f"Ran {route.name} now through the {backend.alias!r} backend, in this process "
            f"(result id {ident}).",
        )
    return RunNowResult(
        "pubsub", ident,
        f"Published {route.name}'s scheduled message to its topic now (message {ident}); the "
        "run is recorded when Pub/Sub delivers it.",
    )


def pause_job(route: TaskRoute, *, scheduler: Any = None,
              config: ProvisioningConfig | None = None) -> str:
    """Pause the route's job; return its state. Pausing a paused job is not an error."""
    return _set_state(route, "pause_job", "PAUSED", scheduler, config)


def resume_job(route: TaskRoute, *, scheduler: Any = None,
               config: ProvisioningConfig | None = None) -> str:
    """Resume the route's job; return its state. Resuming an enabled job is not an error."""
    return _set_state(route, "resume_job", "ENABLED", scheduler, config)


def _set_state(route: TaskRoute, method: str, wanted: str, scheduler: Any,
               config: ProvisioningConfig | None) -> str:
    name = job_name(route, config)
    if scheduler is None and not uses_cloud_scheduler(route):
        raise ProvisioningError(
            f"{route.name} has no Cloud Scheduler job here, because scheduled routes run "
            "locally from `manage.py tasks_scheduler`. Turn the task's kill switch off instead."
        )
    try:
        return job_state(_call(scheduler, method, name, config))
    except ProvisioningError as exc:
        if not isinstance(exc.__cause__, api_exceptions.FailedPrecondition):
            raise
        # The job is not in the state the call expects: fine if it is already where we want.
        state = job_state(_call(scheduler, "get_job", name, config))
        if state != wanted:
            raise
        return state


def get_job(route: TaskRoute, *, scheduler: Any = None,
            config: ProvisioningConfig | None = None) -> Any:
    """The route's Cloud Scheduler job as the API returns it (state, last attempt, status)."""
    return _call(scheduler, "get_job", job_name(route, config), config)


def _call(scheduler: Any, method: str, name: str,
          config: ProvisioningConfig | None = None) -> Any:
    """Call one Scheduler method on a job; errors become ProvisioningError sentences."""
    held = Clients(scheduler=scheduler)
    short = name.rsplit("/", 1)[-1]
    options = config.call_options() if config is not None else {}
    try:
        return getattr(held.get_scheduler(), method)(request={"name": name}, **options)
    except api_exceptions.NotFound as exc:
        raise ProvisioningError(
            f"Cloud Scheduler has no job {short}. Run `manage.py tasks_provision` to create "
            "it, then try again."
        ) from exc
    except api_exceptions.PermissionDenied as exc:
        raise ProvisioningError(
            f"Cloud Scheduler refused {method} on {short}: {exc.message} Grant the service "
            f"account roles/cloudscheduler.admin (see {DOCS})."
        ) from exc
    except api_exceptions.GoogleAPICallError as exc:
        raise ProvisioningError(
            f"Cloud Scheduler {method} on {short} failed: {type(exc).__name__}: {exc.message}"
        ) from exc
    except api_exceptions.RetryError as exc:
        raise ProvisioningError(
            f"Cloud Scheduler did not answer {method} on {short} in time ({exc.message}). "
            "Check the network, GCP_PROJECT_ID and SCHEDULER_LOCATION."
        ) from exc
    finally:
        held.close()  # only a client built here


def _require_schedule(route: TaskRoute) -> None:
    if not route.is_scheduled:
        raise ProvisioningError(
            f"{route.name} has no schedule, so it has no Cloud Scheduler job. Give its "
            "TaskRoute a schedule, or enqueue the task instead."
        )
