"""The task run pages: a changelist that stays fast at millions of rows, a read-only detail."""

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import ShowFacets
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import State
from .base import ActionPermissionMixin
from .exports import ExecutionExportMixin
from .filters import StatusFilter, TaskNameFilter, TriggerFilter
from .pagination import EstimatedCountPaginator

# Columns the changelist never shows and which can hold long tracebacks or payloads.
HEAVY_FIELDS = ("args", "kwargs", "return_value", "errors", "timeline", "raw_message",
                "worker_ids", "status_detail")


class ExecutionChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer(*HEAVY_FIELDS)


class TaskExecutionAdmin(ExecutionExportMixin, ActionPermissionMixin, admin.ModelAdmin):
    change_form_template = "admin/gyrinx_tasks/taskexecution/change_form.html"

    list_display = ("short_result_id", "task_name", "status_badge", "trigger", "attempts",
                    "created_at", "enqueued_at", "finished_at")
    list_filter = (StatusFilter, TriggerFilter, TaskNameFilter)
    # Only columns with an index behind them; sorting by others would sort the whole table.
    sortable_by = ("created_at",)
    search_fields = ("=result_id", "=task_id", "=message_id")
    search_help_text = _("Exact result id, message task id or Pub/Sub message id.")
    list_per_page = 50
    show_full_result_count = False  # a second COUNT(*) over the whole table
    show_facets = ShowFacets.NEVER  # one COUNT per filter choice
    paginator = EstimatedCountPaginator

    fieldsets = (
        (None, {"fields": ("task_name", "task_path", "status", "status_detail", "trigger",
                           "retry_of")}),
        (_("Identity"), {"fields": ("result_id", "task_id", "backend")}),
        (_("Delivery"), {"fields": ("message_id", "delivery_attempt", "attempts",
                                    "worker_list")}),
        (_("Times"), {"fields": ("created_at", "enqueued_at", "started_at",
                                 "last_attempted_at", "finished_at")}),
    )
    readonly_fields = ("worker_list",)

    class Media:
        css = {"all": ["gyrinx_tasks/admin.css"]}

    # Runs are records of what happened: nobody adds or edits them here. Deleting history
    # is kept for superusers.

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def get_changelist(self, request, **kwargs):
        return ExecutionChangeList

    def get_search_results(self, request, queryset, search_term):
        # Django's "=" prefix means a case-insensitive match, which cannot use the unique
        # indexes on PostgreSQL; these ids are matched exactly instead.
        term = search_term.strip()
        if not term:
            return queryset, False
        matches = Q(result_id=term) | Q(task_id=term) | Q(message_id=term)
        return queryset.filter(matches), False

    @admin.display(description=_("result id"))
    def short_result_id(self, obj):
        return obj.result_id[:8]

    @admin.display(description=_("status"))
    def status_badge(self, obj):
        return format_html(
            '<span class="gyrinx-status gyrinx-status-{}">{}</span>',
            obj.status.lower(), obj.get_status_display(),
        )

    @admin.display(description=_("workers"))
    def worker_list(self, obj):
        return ", ".join(obj.worker_ids) or "-"

    def render_change_form(self, request, context, add=False, change=False, form_url="",
                           obj=None):
        if obj is not None:
            context.update(execution_context(obj))
        return super().render_change_form(request, context, add, change, form_url, obj)


def execution_context(obj: Any) -> dict[str, Any]:
    """What the detail page shows below the fields: payload, errors, timeline."""
    payload = [(_("Args"), _pretty(obj.args)), (_("Kwargs"), _pretty(obj.kwargs))]
    if obj.return_value is not None or obj.status == State.SUCCESSFUL:
        payload.append((_("Return value"), _pretty(obj.return_value)))
    errors = [
        {
            "attempt": error.get("attempt"),
            "at": _when(error.get("at")),
            "exception_class_path": error.get("exception_class_path", ""),
            "traceback": error.get("traceback", ""),
        }
        for error in obj.errors or []
        if isinstance(error, dict)
    ]
    timeline = [
        {"at": _when(entry.get("at")), "from": entry.get("from") or "",
         "to": entry.get("to") or "", "note": entry.get("note") or ""}
        for entry in obj.timeline or []
        if isinstance(entry, dict)
    ]
    return {
        "execution_payload": payload,
        "execution_errors": errors,
        "execution_timeline": timeline,
        "execution_raw_message": _pretty_text(obj.raw_message),
    }


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _pretty_text(text: str) -> str:
    """A raw message, indented if it is JSON; as received if it is not."""
    if not text:
        return ""
    try:
        return _pretty(json.loads(text))
    except ValueError:
        return text


def _when(value: Any) -> Any:
    # Timeline and error times are stored as ISO strings; datetimes render in the admin's
    # time zone and format.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value
