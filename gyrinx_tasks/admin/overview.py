"""The overview: per task over a time window, what ran, what failed, how long it took.

A thin face over ``gyrinx_tasks.stats``. The page polls itself through HTMX: often while
anything is queued or running, slowly while nothing is, so a page loaded idle still notices new
work.
"""

from collections import Counter
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .. import stats
from ..dates import format_when
from ..exceptions import RegistryError
from ..health import ready_too_long
from ..models import ScheduledJob, ShownStatus, State
from ..scheduling.health import Health, schedule_health
from .backlog import backlog_view
from .base import HtmxHttpRequest, PageAdmin, has_model_permission, page_context, require
from .stuck import stuck_summary

POLL_SECONDS = 5  # while runs are queued or running
IDLE_POLL_SECONDS = 30  # while nothing is: one cheap query set every half minute
CHART_WIDTH, CHART_HEIGHT = 100, 28
WIDE_CHART_WIDTH, WIDE_CHART_HEIGHT = 1000, 90
# The window's counts, one column each (ShownStatus: failing runs that will retry apart from
# the final failures), then what is in progress now.
COUNTED_STATES = (ShownStatus.SUCCESSFUL, ShownStatus.WILL_RETRY, ShownStatus.FAILED,
                  ShownStatus.SKIPPED, ShownStatus.REJECTED, ShownStatus.RUNNING,
                  ShownStatus.READY)
WINDOW_COUNTS = 5


class OverviewAdmin(PageAdmin):
    """Only a page: no rows to add, change or delete, and no per-object URLs."""

    page_template = "admin/gyrinx_tasks/overview/page.html"
    fragment_template = "admin/gyrinx_tasks/overview/_overview.html"

    def has_view_permission(self, request, obj=None):
        return has_model_permission(request, self.opts, "view_overview")

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [path("", self.admin_site.admin_view(self.changelist_view),
                     name=f"{info[0]}_{info[1]}_changelist"),
                path("backlog/", self.admin_site.admin_view(self.backlog_view),
                     name=f"{info[0]}_{info[1]}_backlog")]

    def backlog_view(self, request: HtmxHttpRequest) -> HttpResponse:
        """The backlog block (admin/backlog.py), loaded by the page through HTMX."""
        return backlog_view(self, request, self.has_view_permission(request),
                            reverse("admin:gyrinx_tasks_overview_backlog"))

    def changelist_view(self, request: HtmxHttpRequest,  # type: ignore[override]
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        require(self.has_view_permission(request))
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        error = ""
        try:
            window = stats.get_window(request.GET.get("window"))
        except stats.UnknownWindow as exc:
            error, window = str(exc), stats.get_window(None)
        context = page_context(self, request, str(_("Overview")), error=error,
                               **overview_context(stats.overview(window), request))
        if request.htmx:
            return TemplateResponse(request, self.fragment_template, context)
        return TemplateResponse(request, self.page_template, context,
                                status=400 if error else 200)


def overview_context(overview: stats.Overview, request: HttpRequest) -> dict[str, Any]:
    page_url = reverse("admin:gyrinx_tasks_overview_changelist")
    runs_url = reverse("admin:gyrinx_tasks_taskexecution_changelist")
    now = timezone.now()
    window_params = {"created_at__gte": overview.since.isoformat(),
                     "created_at__lt": overview.until.isoformat()}

    def runs_link(**params: str) -> str:
        return f"{runs_url}?{urlencode(params)}"

    rows = []
    for task in overview.tasks:
        counts = [
            {"status": status, "label": ShownStatus(status).label,
             "count": task.count(status),
             "url": runs_link(task_name=task.name, status=status, **window_params)}
            for status in COUNTED_STATES[:WINDOW_COUNTS]
        ]
        rows.append({
            "task": task,
            "label": task.name or _("(no task name)"),
            "url": runs_link(task_name=task.name, **window_params),
            "counts": counts,
            "failure_rate": format_rate(task.failure_rate),
            "failing": bool(task.failure_rate),
            "p50": format_seconds(task.p50),
            "p95": format_seconds(task.p95),
            "queue_p50": format_seconds(task.queue_p50),
            "queue_p95": format_seconds(task.queue_p95),
            "ready_url": runs_link(task_name=task.name, status=State.READY),
            "running_url": runs_link(task_name=task.name, status=State.RUNNING),
            "stuck": ready_too_long(task.name, task.oldest_ready, now),
            "chart": chart(task.per_minute, task.failed_per_minute, overview,
                           CHART_WIDTH, CHART_HEIGHT),
        })
    total = [sum(values) for values in zip(*(t.per_minute for t in overview.tasks), strict=True)]
    failed = [sum(values) for values in
              zip(*(t.failed_per_minute for t in overview.tasks), strict=True)]
    running = [{"run": run, "started": format_seconds((now - run.started_at).total_seconds())
                if run.started_at else ""} for run in overview.running]
    totals = {status: sum(t.count(status) for t in overview.tasks) for status in COUNTED_STATES}
    # Only asked for when the window holds failures (the counts above already say so): final
    # ones and failing ones (will retry) alike, each marked.
    any_failed = totals[ShownStatus.FAILED] + totals[ShownStatus.WILL_RETRY]
    failures = [{
        "run": run,
        "error_class": getattr(run, "error_class", None) or "",
        "error_name": (getattr(run, "error_class", None) or "").rsplit(".", 1)[-1],
        "at": run.finished_at or run.created_at,
        "url": reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk]),
        "task_url": runs_link(task_name=run.task_name, status=run.shown_status,
                              **window_params),
    } for run in (stats.recent_failures(overview.since, overview.until)
                  if any_failed else [])]
    poll_query = urlencode({"window": overview.window.key})
    return {
        "overview": overview,
        "rows": rows,
        "running": running,
        "windows": [{"key": w.key, "label": w.label, "url": f"{page_url}?window={w.key}",
                     "current": w.key == overview.window.key, "from_rollups": w.from_rollups}
                    for w in stats.WINDOWS.values()],
        "poll_url": f"{page_url}?{poll_query}",
        "poll_seconds": POLL_SECONDS if overview.active else IDLE_POLL_SECONDS,
        "page_url": page_url,
        "runs_url": runs_url,
        "all_failed_url": runs_link(status=ShownStatus.FAILED, **window_params),
        "all_will_retry_url": runs_link(status=ShownStatus.WILL_RETRY, **window_params),
        "any_failed": any_failed,
        "window_runs_url": runs_link(**window_params),
        "window_total": sum(t.total for t in overview.tasks),
        "totals": totals,
        "failures": failures,
        "running_total": sum(t.running_now for t in overview.tasks),
        "ready_total": sum(t.ready_now for t in overview.tasks),
        "wide_chart": chart(total, failed, overview, WIDE_CHART_WIDTH, WIDE_CHART_HEIGHT),
        "embedded": request.GET.get("embed") == "1",
        "schedule_health": schedule_health_summary(request),
        "stuck": stuck_summary(),
    }


def schedule_health_summary(request: HttpRequest) -> dict[str, Any] | None:
    """How many scheduled jobs are unhealthy, by state, for a user who may see their page."""
    if not has_model_permission(request, ScheduledJob._meta, "view_scheduledjob"):
        return None
    try:
        jobs = schedule_health()
    except RegistryError:
        return None  # the overview already lists what it can without the registry
    if not jobs:
        return None
    states = Counter("schedule unreadable" if job.error else str(job.health)
                     for job in jobs if not job.healthy)
    return {"total": len(jobs), "unhealthy": sum(states.values()),
            "states": sorted(states.items(), key=lambda item: _rank(item[0])),
            "url": reverse("admin:gyrinx_tasks_scheduledjob_changelist")}


def _rank(state: str) -> int:
    return Health(state).rank if state in Health else -1


def chart(values: list[float], failed: list[float], overview: stats.Overview,
          width: int, height: int) -> dict[str, Any]:
    """Bars for a server-rendered SVG: every run in grey, the failed part in red on top."""
    peak = max(values, default=0.0)
    count = len(values) or 1
    step = width / count
    gap = 1 if step >= 3 else 0
    bucket = overview.window.bucket
    bars = []
    for index, value in enumerate(values):
        if not value:
            continue
        high = value / peak * height
        low = failed[index] / peak * height if failed else 0.0
        start = overview.since + bucket * index
        bars.append({
            "x": f"{index * step:.2f}", "w": f"{max(step - gap, 0.5):.2f}",
            "y": f"{height - high:.2f}", "h": f"{high:.2f}",
            "fy": f"{height - low:.2f}", "fh": f"{low:.2f}",
            "title": f"{format_when(start)}: {value:.2f} runs/min"
                     + (f", {failed[index]:.2f} failed" if low else ""),
        })
    return {"bars": bars, "width": width, "height": height, "peak": peak,
            "start": format_when(overview.since, zone=False),
            "end": format_when(overview.until)}


def format_rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


def format_seconds(value: float | None) -> str:
    """240 ms, 3.4 s, 2 min 5 s: durations at a glance."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

