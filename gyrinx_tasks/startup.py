"""Opt-in provisioning when a Cloud Run instance starts (TASKS_PROVISION_ON_STARTUP).

Armed from ``AppConfig.ready()`` and started by the first request the process serves, so
management commands never start it. It runs only on Cloud Run (``K_SERVICE`` is set), never
under tests or with DEBUG on, in a background thread so start-up is never delayed, and it
never raises: a failure is logged and the instance serves as usual. Several instances starting
at once is safe, because applying a plan tolerates resources that others create or change.
"""

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.signals import request_started

from .conf import tasks_settings

logger = logging.getLogger("gyrinx_tasks")

_started = threading.Lock()  # held once this process has started provisioning


def skip_reason(environ: Mapping[str, str] | None = None,
                modules: Mapping[str, Any] | None = None) -> str:
    """Why start-up provisioning should not run here, or "" when it should."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if not tasks_settings.TASKS_PROVISION_ON_STARTUP:
        return "TASKS_PROVISION_ON_STARTUP is off"
    if not environ.get("K_SERVICE"):
        return "not running on Cloud Run (K_SERVICE is not set)"
    if "pytest" in modules or getattr(settings, "TESTING", False):
        return "running under tests"
    if settings.DEBUG:
        return "DEBUG is on"
    return ""


def maybe_provision_on_startup() -> None:
    """Provision in a background thread once this process serves its first request, if it
    should run at all.

    Waiting for a request keeps management commands (migrate, shell, a Cloud Run job), which
    load the apps too but serve nothing, from starting network calls they do not need.
    """
    reason = skip_reason()
    if reason:
        logger.debug("Not provisioning on start-up: %s.", reason)
        return
    request_started.connect(_on_first_request, dispatch_uid="gyrinx_tasks.provision_on_startup")


def _on_first_request(sender: Any = None, **kwargs: Any) -> threading.Thread | None:
    """Start provisioning for the process's first request; later requests do nothing."""
    if not _started.acquire(blocking=False):
        return None  # already started by an earlier request
    request_started.disconnect(dispatch_uid="gyrinx_tasks.provision_on_startup")
    return start_in_background()


def start_in_background(run: Callable[[], Any] | None = None) -> threading.Thread:
    thread = threading.Thread(target=run_safely, args=(run,), daemon=True,
                              name="gyrinx-tasks-provision")
    thread.start()
    return thread


def run_safely(run: Callable[[], Any] | None = None) -> bool:
    """Provision (or call ``run``), logging the outcome; return whether it succeeded."""
    try:
        if run is None:
            from .provisioning import provision

            plan = provision()
            logger.info("Provisioned on start-up; the plan was: %s", plan.summary())
        else:
            run()
    except Exception:
        logger.exception(
            "Provisioning on start-up failed; the service runs on with the resources as they "
            "are. Run `manage.py tasks_provision --dry-run` to see what differs."
        )
        return False
    return True
