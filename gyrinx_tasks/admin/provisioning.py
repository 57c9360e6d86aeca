"""Provisioning status: the registry against GCP per route, and "Provision now".

The page itself never calls GCP: it renders at once and loads the plan from ``plan/``
through HTMX, so a slow or unreachable API never blocks the admin. Every GCP call made for
these pages gives up after CALL_TIMEOUT seconds, retries included (see docs/admin.md).
"""

import hashlib
import logging
from dataclasses import replace
from typing import Any

from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from google.api_core import exceptions as api_exceptions

from ..conf import tasks_settings
from ..exceptions import RegistryError
from ..models import ProvisioningStatus
from ..provisioning import (
    Action,
    Kind,
    Plan,
    ProvisioningConfig,
    ProvisioningError,
    Verb,
    apply_plan,
    build_plan,
)
from ..registry import get_routes
from .backlog import backlog_view
from .base import HtmxHttpRequest, PageAdmin, audit, has_model_permission, page_context, require

logger = logging.getLogger("gyrinx_tasks")

# One GCP call (retries included) gives up after this; reading a plan makes at most three
# (topics, subscriptions, Scheduler jobs), so the plan fragment answers within ~10 s.
CALL_TIMEOUT = 3.0
TEMPLATES = "admin/gyrinx_tasks/provisioningstatus"
STATES = {
    Verb.UNCHANGED: ("in sync", "ok"),
    Verb.CREATE: ("missing", "missing"),
    Verb.UPDATE: ("differs", "differs"),
    Verb.CONFLICT: ("differs", "differs"),
    Verb.ORPHAN: ("orphaned", "orphan"),
    Verb.DELETE: ("orphaned", "orphan"),
}


def read_plan() -> Plan:
    """The plan against GCP with every call bounded (tests replace this with a fake)."""
    config = replace(ProvisioningConfig.from_settings(), call_timeout=CALL_TIMEOUT)
    return build_plan(config=config)


def describe_failure(exc: Exception, detail: bool = True) -> dict[str, Any]:
    """What failed, and what to check, as the fragment shows it in place of the plan.

    ``detail`` (superusers and provisioners) shows the error's own text and the settings'
    values. Without it the fragment says what kind of failure it was in a sentence: the
    Google clients' messages name key files, service accounts and project ids, which staff
    who may only look at the page need not see. The server log has the detail either way.
    """
    if not detail:
        return {"what": failure_sentence(exc), "checks": GENERIC_CHECKS,
                "timeout": CALL_TIMEOUT}
    emulator = tasks_settings.emulator_host
    try:
        from ..provisioning.config import default_project

        project = default_project()
    except Exception:  # the backend itself may be misconfigured; the error says so
        project = ""
    checks = []
    if isinstance(exc, ImproperlyConfigured):
        checks.append("The settings named above; see docs/provisioning.md.")
    if emulator:
        checks.append(
            f"PUBSUB_EMULATOR_HOST is {emulator}: is the Pub/Sub emulator running there? "
            f"(gcloud beta emulators pubsub start --host-port={emulator}). Unset it to use GCP."
        )
    else:
        checks.append(
            "Credentials: on Cloud Run, the service's service account; elsewhere "
            "`gcloud auth application-default login`. The identity needs the roles listed "
            "in docs/provisioning.md. For the local emulator, set PUBSUB_EMULATOR_HOST."
        )
    checks.append(
        f"GCP_PROJECT_ID is {project!r}: is that the project holding the topics?"
        if project else "GCP_PROJECT_ID is not set: set it to the project holding the topics."
    )
    return {"what": str(exc) or type(exc).__name__, "checks": checks,
            "timeout": CALL_TIMEOUT}


GENERIC_CHECKS = [
    "The provisioning settings (GCP_PROJECT_ID, CLOUD_RUN_SERVICE_URL, "
    "TASKS_SERVICE_ACCOUNT); see docs/provisioning.md.",
    "The service's Google credentials and the roles listed in docs/provisioning.md, or, "
    "locally, that the Pub/Sub emulator named by PUBSUB_EMULATOR_HOST is running.",
]


def failure_sentence(exc: BaseException) -> str:
    """One sentence on what kind of failure ``exc`` is, quoting nothing from it."""
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(cause, ImproperlyConfigured) for cause in causes):
        kind = "The provisioning settings are incomplete or wrong."
    elif any(isinstance(cause, RegistryError) for cause in causes):
        kind = "TASKS_REGISTRY cannot be loaded."
    elif any(isinstance(cause, (api_exceptions.RetryError, api_exceptions.DeadlineExceeded,
                                api_exceptions.ServiceUnavailable)) for cause in causes):
        kind = "GCP did not answer in time."
    elif any(isinstance(cause, (api_exceptions.PermissionDenied, api_exceptions.Unauthenticated,
                                api_exceptions.Forbidden)) for cause in causes):
        kind = "GCP refused the credentials of this service, or they lack a role."
    elif any(type(cause).__module__.startswith("google.auth") for cause in causes):
        kind = "No usable Google credentials were found for this service."
    else:
        kind = "Reading the state of GCP failed."
    return (f"{kind} The text of the error is shown to superusers and to staff who may "
            "provision, and is in the server log.")


def cell(action: Action | None, empty: str = "") -> dict[str, Any]:
    if action is None:
        return {"label": empty, "css": "none"}
    label, css = STATES[action.verb]
    return {"label": label, "css": css, "name": action.short_name, "changes": action.changes,
            "note": action.note, "job_state": action.state}


def plan_rows(plan: Plan) -> dict[str, Any]:
    """The plan per route (topic, subscription, Scheduler job), plus what no route owns."""
    rows: list[dict[str, Any]] = []
    claimed: set[int] = set()
    for route in get_routes():
        found = {a.kind: a for a in plan.for_route(route)}
        claimed.update(id(a) for a in found.values())
        if not route.is_scheduled:
            job = cell(None, "not scheduled")
        elif not plan.config.uses_cloud_scheduler:
            job = cell(None, "fired by the local scheduler")
        else:
            job = cell(found.get(Kind.SCHEDULER_JOB), "not read")
        # A topic shared by several routes belongs to the first; the others show it too.
        topic = found.get(Kind.TOPIC) or next(
            (a for a in plan.actions if a.kind == Kind.TOPIC
             and a.short_name == route.topic_name), None)
        rows.append({"route": route, "topic": cell(topic, "not read"),
                     "subscription": cell(found.get(Kind.SUBSCRIPTION), "not read"),
                     "job": job})
        if topic is not None:
            claimed.add(id(topic))
    others = [dict(cell(a), kind=a.kind) for a in plan.actions
              if id(a) not in claimed and a.verb not in (Verb.ORPHAN, Verb.DELETE)]
    orphans = [dict(cell(a), kind=a.kind, verb=a.verb) for a in plan.actions
               if a.verb in (Verb.ORPHAN, Verb.DELETE)]
    return {"rows": rows, "others": others, "orphans": orphans}


def fingerprint(plan: Plan) -> str:
    """Identifies the plan that was confirmed, so a changed one is shown again, not applied."""
    return hashlib.sha256("\n".join(plan.lines()).encode()).hexdigest()[:16]


class ProvisioningStatusAdmin(PageAdmin):
    """The page of ProvisioningStatus (a proxy with no rows of its own)."""

    def has_provision_permission(self, request: HttpRequest) -> bool:
        return has_model_permission(request, self.opts, "provision_provisioningstatus")

    def get_urls(self) -> list:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("", view(self.changelist_view), name=f"{name}_changelist"),
            path("plan/", view(require_GET(self.plan_view)), name=f"{name}_plan"),
            path("confirm/", view(require_GET(self.confirm_view)), name=f"{name}_confirm"),
            path("apply/", view(require_POST(self.apply_view)), name=f"{name}_apply"),
            path("backlog/", view(self.backlog_view), name=f"{name}_backlog"),
        ]

    def backlog_view(self, request: HtmxHttpRequest) -> HttpResponse:
        """The backlog block (admin/backlog.py), loaded by the page through HTMX."""
        return backlog_view(self, request, self.has_view_permission(request),
                            self._url("backlog"))

    def _url(self, view: str) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}",
                       current_app=self.admin_site.name)

    def _render(self, request: HtmxHttpRequest, fragment: str, context: dict[str, Any],
                status: int = 200) -> HttpResponse:
        """The fragment alone for HTMX, or the whole page around it (no JavaScript)."""
        context = {"plan_url": self._url("plan"), "confirm_url": self._url("confirm"),
                   "apply_url": self._url("apply"), "page_url": self._url("changelist"),
                   "can_provision": self.has_provision_permission(request), **context}
        if request.htmx:
            return TemplateResponse(request, f"{TEMPLATES}/{fragment}", context, status=status)
        context = page_context(self, request, "Provisioning status",
                               fragment=f"{TEMPLATES}/{fragment}", **context)
        return TemplateResponse(request, f"{TEMPLATES}/page.html", context, status=status)

    def may_see_failure_detail(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser
                    or self.has_provision_permission(request))

    def _plan_or_failure(self, request: HttpRequest
                         ) -> tuple[Plan | None, dict[str, Any] | None]:
        detail = self.may_see_failure_detail(request)
        try:
            return read_plan(), None
        except (ProvisioningError, ImproperlyConfigured, RegistryError,
                api_exceptions.GoogleAPIError) as exc:
            logger.warning("Reading the provisioning plan failed: %s", exc)
            return None, describe_failure(exc, detail)
        except Exception as exc:  # never a 500 on a status page; the log has the traceback
            logger.exception("Reading the provisioning plan failed")
            return None, describe_failure(exc, detail)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        require(self.has_view_permission(request))
        context = page_context(self, request, "Provisioning status", plan_url=self._url("plan"))
        return TemplateResponse(request, f"{TEMPLATES}/page.html", context)

    def plan_view(self, request: HtmxHttpRequest) -> HttpResponse:
        require(self.has_view_permission(request))
        plan, failure = self._plan_or_failure(request)
        if plan is None:
            return self._render(request, "_failure.html", {"failure": failure})
        with plan:
            context = {"plan": plan, **plan_rows(plan)}
            return self._render(request, "_plan.html", context)

    def confirm_view(self, request: HtmxHttpRequest) -> HttpResponse:
        require(self.has_provision_permission(request))
        plan, failure = self._plan_or_failure(request)
        if plan is None:
            return self._render(request, "_failure.html", {"failure": failure})
        with plan:
            return self._render(request, "_confirm.html", self._confirm_context(plan))

    def _confirm_context(self, plan: Plan, changed: bool = False) -> dict[str, Any]:
        todo = [a for a in plan.actions if a.verb in (Verb.CREATE, Verb.UPDATE, Verb.DELETE)]
        return {"plan": plan, "todo": todo, "fingerprint": fingerprint(plan),
                "changed": changed}

    def apply_view(self, request: HtmxHttpRequest) -> HttpResponse:
        require(self.has_provision_permission(request))
        plan, failure = self._plan_or_failure(request)
        if plan is None:
            return self._render(request, "_failure.html", {"failure": failure})
        with plan:
            if request.POST.get("fingerprint") != fingerprint(plan):
                # GCP (or the registry) changed since the confirmation was shown.
                return self._render(request, "_confirm.html",
                                    self._confirm_context(plan, changed=True))
            error = ""
            try:
                apply_plan(plan)
            except ProvisioningError as exc:
                error = str(exc)
            done = [a for a in plan.actions if a.result or a.error]
            lines = [f"{a.verb} {a.kind} {a.short_name}: {a.error or a.result}" for a in done]
            audit(request, f"GCP project {plan.config.project}",
                  "Provision now: " + ("; ".join(lines) or "nothing to change") + ".",
                  model=ProvisioningStatus)
        if not request.htmx:
            level = messages.ERROR if error else messages.SUCCESS
            messages.add_message(request, level, error or (
                "Provisioned: " + ("; ".join(lines) or "nothing to change") + "."))
            return HttpResponseRedirect(self._url("changelist"))
        return self._render(request, "_applied.html", {"done": done, "error": error})
