"""Scheduled jobs: every scheduled route, its next runs and last run; Run now, Pause, Resume.

The Cloud Scheduler state of each job loads lazily (``job/<name>/``, one bounded call), so
the page itself never waits on GCP. Run now answers with the row's last-run cell, which then
polls ``last-run/<name>/?watch=<message id>`` every second until the run settles.
"""

import math
import time
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from ..conf import tasks_settings
from ..dates import TIME, format_when, zones_agree
from ..exceptions import RegistryError, UnknownTask
from ..models import KillSwitch, ScheduledJob, State, SwitchMode, TaskExecution
from ..provisioning import ProvisioningConfig, ProvisioningError
from ..provisioning.config import default_project
from ..registry import get_route, get_routes
from ..routes import TaskRoute
from ..scheduling.cron import describe_schedule, next_fire_time, schedule_zone
from ..scheduling.health import schedule_health
from ..scheduling.jobs import get_job, pause_job, resume_job, run_now, uses_cloud_scheduler
from .base import HtmxHttpRequest, PageAdmin, audit, has_model_permission, page_context, require

TEMPLATES = "admin/gyrinx_tasks/scheduledjob"
CALL_TIMEOUT = 3.0  # seconds for one Cloud Scheduler call, retries included
NEXT_RUNS = 5
SETTLED = {State.SUCCESSFUL, State.FAILED, State.SKIPPED, State.REJECTED, State.CANCELLED}
# Stop watching a Run now whose message has not been delivered after this long.
WATCH_LIMIT = 600
# How far in the future a watch's start time may be (servers' clocks differ a little).
CLOCK_SKEW = 60


def scheduler_config() -> ProvisioningConfig:
    """Enough of a config to name and call a job; push settings are not needed here."""
    return ProvisioningConfig(default_project(), tasks_settings.SCHEDULER_LOCATION, "",
                              call_timeout=CALL_TIMEOUT)


def next_runs(route: TaskRoute, now: datetime) -> list[dict[str, str]]:
    """The next fire times, as text in the route's zone and in the viewer's (Django's current
    time zone), or once when both read the same. Formatted here because the template's date
    filter would convert both."""
    zone, viewer = schedule_zone(route), timezone.get_current_timezone()
    runs, at = [], now
    for _ in range(NEXT_RUNS):
        at = next_fire_time(route, at)
        theirs = at.astimezone(viewer)
        same_day = theirs.date() == at.astimezone(zone).date()
        runs.append({
            "iso": at.isoformat(),
            "route": format_when(at, tz=zone),
            "viewer": "" if zones_agree(at, zone, viewer) else (
                f"{dateformat.format(theirs, TIME)} {dateformat.format(theirs, 'T')}"
                if same_day else format_when(at, tz=viewer)),
        })
    return runs


def duration(run: TaskExecution | None) -> str:
    if run is None or not run.started_at or not run.finished_at:
        return ""
    seconds = (run.finished_at - run.started_at).total_seconds()
    return f"{seconds:.2f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def last_run(route: TaskRoute) -> TaskExecution | None:
    # Served by the (task_name, -created_at) index.
    return TaskExecution.objects.filter(task_name=route.name).order_by("-created_at",
                                                                       "-id").first()


def parse_since(text: str) -> float | None:
    """The ``since`` of a watched Run now: a Unix time no later than now, or None.

    inf, nan, 1e400 and times in the future would keep a watch polling for ever (or fail as
    a 500 when rounded); a little clock skew between servers is allowed.
    """
    try:
        since = float(text)
    except ValueError:
        return None
    if not math.isfinite(since) or not 0 <= since <= time.time() + CLOCK_SKEW:
        return None
    return since


def run_now_message(message: str, ident: str) -> str:
    """What Run now did, with a link to the run when it is already recorded (a backend that
    ran it at once); a Pub/Sub run is recorded on delivery, and its cell follows it."""
    shown = ("pk", "status", "gave_up", "attempts", "message_id")  # what shown_status reads
    run = (TaskExecution.objects.filter(result_id=ident).only(*shown).first()
           or TaskExecution.objects.filter(message_id=ident).only(*shown).first())
    if run is None:
        return message
    return format_html('{} <a href="{}">Open the run</a> ({}).', message,
                       reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk]),
                       run.shown_status.label.lower())


def switch_state(route: TaskRoute, switch: KillSwitch | None) -> dict[str, str]:
    """The task's kill switch as the row shows it: state, label and why."""
    if not route.env_switch_enabled():
        return {"state": "env", "label": "Off · environment",
                "reason": f"{route.enabled_env_var} is off; firings are skipped."}
    if switch is not None and not switch.enabled:
        if switch.mode == SwitchMode.HOLD:
            return {"state": "hold", "label": "Off · holding", "reason": switch.reason}
        return {"state": "skip", "label": "Off · skipping", "reason": switch.reason}
    return {"state": "on", "label": "On", "reason": ""}


class ScheduledJobAdmin(PageAdmin):
    """The page of ScheduledJob (a proxy with no rows of its own)."""

    def has_run_permission(self, request: HttpRequest) -> bool:
        return has_model_permission(request, self.opts, "run_scheduledjob")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return has_model_permission(request, self.opts, "pause_scheduledjob")

    def get_urls(self) -> list:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("", view(self.changelist_view), name=f"{name}_changelist"),
            path("last-run/<str:task>/", view(require_GET(self.last_run_view)),
                 name=f"{name}_lastrun"),
            path("job/<str:task>/", view(require_GET(self.job_view)), name=f"{name}_job"),
            path("run/<str:task>/", view(require_POST(self.run_view)), name=f"{name}_run"),
            path("pause/<str:task>/", view(require_POST(self.pause_view)),
                 name=f"{name}_pause"),
            path("resume/<str:task>/", view(require_POST(self.resume_view)),
                 name=f"{name}_resume"),
        ]

    def _url(self, view: str, *args: str) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}",
                       args=args, current_app=self.admin_site.name)

    def _route(self, task: str) -> TaskRoute:
        try:
            route = get_route(task)
        except UnknownTask as exc:
            raise Http404(str(exc)) from exc
        except RegistryError as exc:
            # Shown as Django's 404 page with the registry's sentence, not a 500.
            raise Http404(str(exc)) from exc
        if not route.is_scheduled:
            raise Http404(f"{task} has no schedule.")
        return route

    # --- context --------------------------------------------------------------------------

    def _last_run_context(self, route: TaskRoute, watch: str = "",
                          since: float = 0) -> dict[str, Any]:
        run = last_run(route)
        watched = None
        if watch:
            # Message ids are unique within a topic only: the route's task names the topic.
            watched = (TaskExecution.objects.filter(task_name=route.name, message_id=watch).first()
                       or TaskExecution.objects.filter(result_id=watch).first())
        polling = bool(watch) and (watched is None or watched.status not in SETTLED)
        expired = polling and watched is None and time.time() - since > WATCH_LIMIT
        return {
            "route": route, "run": run, "duration": duration(run), "watch": watch,
            "since": int(since), "watched": watched, "polling": polling and not expired,
            "expired": expired, "lastrun_url": self._url("lastrun", route.name),
        }

    def _row_context(self, request: HttpRequest, route: TaskRoute, now: datetime,
                     switch: KillSwitch | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"route": route, "cloud": uses_cloud_scheduler(route),
                               "switch": switch_state(route, switch)}
        try:
            row["description"] = describe_schedule(route)
            row["next_runs"] = next_runs(route, now)
        except ImproperlyConfigured as exc:
            row["schedule_error"] = str(exc)
        row.update(self._last_run_context(route))
        row.update(job_url=self._url("job", route.name), run_url=self._url("run", route.name))
        return row

    def _base(self, request: HttpRequest) -> dict[str, Any]:
        return {"can_run": self.has_run_permission(request),
                "can_pause": self.has_pause_permission(request),
                "viewer_zone": timezone.get_current_timezone_name()}

    def _job_context(self, request: HttpRequest, route: TaskRoute, done: str = "",
                     failed: str = "") -> dict[str, Any]:
        """The job cell: its state read now (one bounded call), and what an action did."""
        job, error = None, ""
        try:
            job = get_job(route, config=scheduler_config())
        except ProvisioningError as exc:
            error = str(exc)
        context = {"route": route, "job": job, "error": error, "done": done, "failed": failed,
                   "pause_url": self._url("pause", route.name),
                   "resume_url": self._url("resume", route.name),
                   "provisioning_url": reverse("admin:gyrinx_tasks_provisioningstatus_changelist",
                                               current_app=self.admin_site.name),
                   **self._base(request)}
        if job is not None:
            context["state"] = getattr(job.state, "name", str(job.state))
            attempt = job.last_attempt_time
            context["last_attempt"] = attempt if attempt and attempt.timestamp() > 0 else None
            status = job.status if "status" in job else None
            context["attempt_error"] = status.message if status and status.code else ""
        return context

    # --- views ----------------------------------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        require(self.has_view_permission(request))
        now, error = timezone.now(), ""
        try:
            routes = [route for route in get_routes() if route.is_scheduled]
        except RegistryError as exc:
            routes, error = [], str(exc)
        # Every scheduled task's switch in one query; a task without a row is on.
        switches = {switch.task_name: switch for switch in
                    KillSwitch.objects.filter(task_name__in=[route.name for route in routes])}
        rows = [self._row_context(request, route, now, switches.get(route.name))
                for route in routes]
        health = {job.route.name: job for job in schedule_health(now, routes)}
        for row in rows:
            row["health"] = health.get(row["route"].name)
        can_see_switches = request.user.has_perm("gyrinx_tasks.view_killswitch")
        context = page_context(
            self, request, "Scheduled jobs", rows=rows, registry_error=error,
            killswitches_url=reverse("admin:gyrinx_tasks_killswitch_changelist",
                                     current_app=self.admin_site.name)
            if can_see_switches else "",
            **self._base(request))
        return TemplateResponse(request, f"{TEMPLATES}/page.html", context)

    def last_run_view(self, request: HtmxHttpRequest, task: str) -> HttpResponse:
        require(self.has_view_permission(request))
        route = self._route(task)
        since = parse_since(request.GET.get("since", "0"))
        if since is None:
            return HttpResponseBadRequest(
                "since must be the Unix time in seconds at which Run now was clicked, as the "
                "page writes it; reload the scheduled jobs page.",
                content_type="text/plain; charset=utf-8")
        context = self._last_run_context(route, request.GET.get("watch", "")[:100], since)
        if not request.htmx:
            return HttpResponseRedirect(self._url("changelist"))
        response = TemplateResponse(request, f"{TEMPLATES}/_last_run.html", context)
        if context["watch"] and not context["polling"]:
            # Settled (or given up): 286 tells htmx to stop polling; the cell is still swapped.
            stop = HttpResponseStopPolling(response.render().content)
            return stop
        return response

    def job_view(self, request: HtmxHttpRequest, task: str) -> HttpResponse:
        require(self.has_view_permission(request))
        route = self._route(task)
        if not request.htmx:
            return HttpResponseRedirect(self._url("changelist"))
        return TemplateResponse(request, f"{TEMPLATES}/_job.html",
                                self._job_context(request, route))

    def run_view(self, request: HtmxHttpRequest, task: str) -> HttpResponse:
        require(self.has_run_permission(request))
        route = self._route(task)
        user = request.user.get_username()
        try:
            result = run_now(route, requested_by=user)
        except Exception as exc:  # publishing failed: say so in place, never a 500
            message = f"Run now failed: {exc}"
            audit(request, route.name, message, model=ScheduledJob)
            if not request.htmx:
                messages.error(request, message)
                return HttpResponseRedirect(self._url("changelist"))
            context = self._last_run_context(route)
            context["run_error"] = message
            return TemplateResponse(request, f"{TEMPLATES}/_last_run.html", context)
        audit(request, route.name, f"Run now by {user}: {result.message}", model=ScheduledJob)
        said = run_now_message(result.message, result.ident)
        if not request.htmx:
            messages.success(request, said)
            return HttpResponseRedirect(self._url("changelist"))
        context = self._last_run_context(route, result.ident, time.time())
        context["run_message"] = said
        return TemplateResponse(request, f"{TEMPLATES}/_last_run.html", context)

    def pause_view(self, request: HtmxHttpRequest, task: str) -> HttpResponse:
        return self._set_state(request, task, pause_job, "Paused")

    def resume_view(self, request: HtmxHttpRequest, task: str) -> HttpResponse:
        return self._set_state(request, task, resume_job, "Resumed")

    def _set_state(self, request: HtmxHttpRequest, task: str, call: Any,
                   verb: str) -> HttpResponse:
        require(self.has_pause_permission(request))
        route = self._route(task)
        done = failed = ""
        try:
            state = call(route, config=scheduler_config())
            done = f"{verb} the Cloud Scheduler job of {route.name}; it is now {state}."
        except ProvisioningError as exc:
            failed = f"{verb[:-1]} failed: {exc}"
        audit(request, route.name, done or failed, model=ScheduledJob)
        if not request.htmx:
            messages.add_message(request, messages.ERROR if failed else messages.SUCCESS,
                                 failed or done)
            return HttpResponseRedirect(self._url("changelist"))
        return TemplateResponse(request, f"{TEMPLATES}/_job.html",
                                self._job_context(request, route, done, failed))
