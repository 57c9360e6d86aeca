"""Where provisioning points: the project, push endpoint and identity, read from settings."""

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ..conf import PUSH_PATH, tasks_settings

# runserver's default address; the emulator pushes there unless told otherwise.
EMULATOR_PUSH_ENDPOINT = f"http://127.0.0.1:8000{PUSH_PATH}"
DOCS = "docs/provisioning.md"


class ProvisioningConfigError(ImproperlyConfigured):
    """Provisioning cannot start because a setting it needs is missing or wrong."""


class ProvisioningError(Exception):
    """A provisioning call to Pub/Sub or Cloud Scheduler failed."""


@dataclass(frozen=True)
class ProvisioningConfig:
    """Everything provisioning needs besides the routes. Build it with ``from_settings()``."""

    project: str
    location: str
    push_endpoint: str
    service_account: str = ""  # "" means no OIDC token (the emulator sends none)
    audience: str = ""
    emulator: bool = False  # True: Pub/Sub only; scheduled routes fire from tasks_scheduler
    # Seconds one GCP call may take, retries included; None keeps the clients' defaults
    # (about a minute). The admin sets a few seconds so a page never hangs on GCP.
    call_timeout: float | None = None

    def call_options(self) -> dict[str, Any]:
        """``retry`` and ``timeout`` keyword arguments bounding one Google client call."""
        if self.call_timeout is None:
            return {}
        from google.api_core import retry as retries

        retry = retries.Retry(predicate=retries.if_transient_error, initial=0.2, maximum=1.0,
                              multiplier=2.0, timeout=self.call_timeout)
        return {"retry": retry, "timeout": self.call_timeout}

    @property
    def uses_cloud_scheduler(self) -> bool:
        return not self.emulator

    def topic_path(self, topic_id: str) -> str:
        return f"projects/{self.project}/topics/{topic_id}"

    def subscription_path(self, subscription_id: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription_id}"

    @property
    def scheduler_parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def job_path(self, job_id: str) -> str:
        return f"{self.scheduler_parent}/jobs/{job_id}"

    @classmethod
    def from_settings(cls, push_endpoint: str | None = None,
                      emulator: bool | None = None) -> "ProvisioningConfig":
        """Read settings; raise ProvisioningConfigError naming every missing one and its fix.

        ``emulator`` defaults to whether PUBSUB_EMULATOR_HOST is set. ``push_endpoint``
        overrides the endpoint (in emulator mode it defaults to runserver's address).
        """
        if emulator is None:
            emulator = bool(tasks_settings.emulator_host)
        project = default_project()
        problems = []
        if not project:
            problems.append(
                "GCP_PROJECT_ID is not set. Set the GCP_PROJECT_ID setting or environment "
                "variable (or the backend's OPTIONS['project_id']) to the project that holds "
                "the topics."
            )
        if emulator:
            endpoint = push_endpoint or emulator_push_endpoint()
            config = cls(project, tasks_settings.SCHEDULER_LOCATION, endpoint, emulator=True)
        else:
            endpoint = push_endpoint or tasks_settings.push_endpoint
            problems += _production_problems(endpoint)
            config = cls(
                project, tasks_settings.SCHEDULER_LOCATION, endpoint,
                service_account=tasks_settings.TASKS_SERVICE_ACCOUNT,
                # The audience the push endpoint verifies; it follows an overridden endpoint.
                audience=_explicit_audience() or endpoint,
            )
        if problems:
            raise ProvisioningConfigError(" ".join(problems))
        return config


def _production_problems(endpoint: str) -> list[str]:
    problems = []
    if not endpoint:
        problems.append(
            "CLOUD_RUN_SERVICE_URL is not set, so the push subscriptions have no endpoint. "
            "Set it to the Cloud Run service's URL, e.g. https://myservice-abc123-ew.a.run.app "
            "(or run against the Pub/Sub emulator by setting PUBSUB_EMULATOR_HOST)."
        )
    elif urlsplit(endpoint).scheme != "https":
        problems.append(
            f"The push endpoint {endpoint!r} is not an https:// URL, and Pub/Sub pushes only "
            "to https outside the emulator. Set CLOUD_RUN_SERVICE_URL to the service's "
            "https:// URL."
        )
    if "@" not in tasks_settings.TASKS_SERVICE_ACCOUNT:
        problems.append(
            "TASKS_SERVICE_ACCOUNT is not set, so push requests would carry no OIDC token. "
            "Set it to the email of the service account Pub/Sub signs tokens as, e.g. "
            "pubsub-invoker@my-project.iam.gserviceaccount.com; it needs roles/run.invoker "
            f"on the service (see {DOCS})."
        )
    return problems


def _explicit_audience() -> str:
    value = getattr(settings, "TASKS_OIDC_AUDIENCE", None)
    return str(value or os.environ.get("TASKS_OIDC_AUDIENCE", "") or "")


def emulator_push_endpoint() -> str:
    """Where the emulator pushes: TASKS_EMULATOR_PUSH_ENDPOINT (setting, then environment
    variable); else CLOUD_RUN_SERVICE_URL when it is a plain http:// (local) URL; else
    runserver's default address. An https:// service URL is a deployed service, which the
    emulator must not push to: it would send no token, and the service would refuse it."""
    value = getattr(settings, "TASKS_EMULATOR_PUSH_ENDPOINT", None)
    value = value or os.environ.get("TASKS_EMULATOR_PUSH_ENDPOINT", "")
    if value:
        return str(value)
    if urlsplit(tasks_settings.CLOUD_RUN_SERVICE_URL).scheme == "http":
        return tasks_settings.push_endpoint
    return EMULATOR_PUSH_ENDPOINT


def default_project() -> str:
    """The project the default backend publishes to, so topics are made where messages go."""
    from django.tasks import task_backends
    from django.tasks.exceptions import InvalidTaskBackend

    from ..backend import PubSubBackend

    try:
        backend = task_backends["default"]
    except (InvalidTaskBackend, KeyError):
        backend = None
    if isinstance(backend, PubSubBackend) and backend.project_id:
        return backend.project_id
    return tasks_settings.GCP_PROJECT_ID
