"""The backlog block: per route, what waits in its push subscription (gyrinx_tasks.backlog).

Shown on the overview and the provisioning page. Both pages render at once and load this block
through HTMX, so Cloud Monitoring never slows them down; each page's admin serves it at its own
``backlog/`` URL behind its own view permission.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse

from .. import backlog as backlogs
from ..conf import tasks_settings
from ..exceptions import RegistryError
from ..registry import get_routes
from .base import HtmxHttpRequest, page_context, require

TEMPLATE = "admin/gyrinx_tasks/backlog/_backlog.html"
PAGE_TEMPLATE = "admin/gyrinx_tasks/backlog/page.html"
# An oldest message older than this is worth a look: deliveries are failing or slow.
OLD_AFTER_SECONDS = 10 * 60


def backlog_context(backlog: backlogs.Backlog) -> dict[str, Any]:
    """The block's rows: one per route, in the registry's order."""
    rows: list[dict[str, Any]] = []
    problem = ""
    try:
        routes = get_routes()
    except RegistryError:
        routes, problem = (), "TASKS_REGISTRY cannot be loaded, so no route is listed."
    for route in routes:
        sample = backlog.for_subscription(route.subscription_name)
        rows.append(
            {
                "route": route,
                "subscription": route.subscription_name,
                "sample": sample,
                "undelivered": sample.undelivered,
                "age": backlogs.format_age(sample.oldest_age),
                "old": bool(sample.oldest_age and sample.oldest_age > OLD_AFTER_SECONDS),
            }
        )
    return {
        "backlog": backlog,
        "rows": rows,
        "problem": problem,
        "total": sum(row["undelivered"] or 0 for row in rows),
        "refresh_seconds": tasks_settings.TASKS_BACKLOG_CACHE_SECONDS,
        "old_after": backlogs.format_age(OLD_AFTER_SECONDS),
    }


def backlog_view(
    model_admin: admin.ModelAdmin, request: HtmxHttpRequest, allowed: bool, backlog_url: str
) -> HttpResponse:
    """The block for HTMX, or a page around it (the link shown without JavaScript)."""
    require(allowed)
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    context = {"backlog_url": backlog_url, **backlog_context(backlogs.read_backlog())}
    if request.htmx:
        return TemplateResponse(request, TEMPLATE, context)
    return TemplateResponse(
        request, PAGE_TEMPLATE, page_context(model_admin, request, "Backlog", **context)
    )
