"""The task run pages: a changelist that stays fast at millions of rows, a read-only detail."""

import json
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.options import ShowFacets
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..conf import tasks_settings
from ..dates import format_when
from ..models import State, TaskExecution
from ..redaction import is_redacted, redaction_note
from ..retry import (
    RETRYABLE,
    Retried,
    RetryError,
    RetryLimitExceeded,
    RetryPublishFailed,
    RetryReport,
    count_selection,
    limit_message,
    live_retry_refusal,
    republish_refusal,
    republish_run,
    retry_queryset,
    retry_run,
)
from .base import ActionPermissionMixin, audit, has_model_permission, page_context, require
from .exports import ExecutionExportMixin
from .filters import StatusFilter, TaskNameFilter, TriggerFilter
from .pagination import EstimatedCountPaginator

# Columns the changelist never shows and which can hold long tracebacks or payloads.
HEAVY_FIELDS = ("args", "kwargs", "return_value", "errors", "timeline", "raw_message",
                "worker_ids", "status_detail")


TIME_FIELDS = ("created_at_when", "enqueued_at_when", "started_at_when",
               "last_attempted_at_when", "finished_at_when")


class ExecutionChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer(*HEAVY_FIELDS)


class TaskExecutionAdmin(ExecutionExportMixin, ActionPermissionMixin, admin.ModelAdmin):
    change_form_template = "admin/gyrinx_tasks/taskexecution/change_form.html"

    # Compact, unwrapped times and a duration instead of three long dates, so the list fits
    # 1400 px with the filter sidebar (the enqueue time is on each run's page).
    list_display = ("short_result_id", "task_name", "status_badge", "trigger", "attempts",
                    "created", "duration")
    list_filter = (StatusFilter, TriggerFilter, TaskNameFilter)
    # Only columns with an index behind them; sorting by others would sort the whole table.
    sortable_by = ("created",)
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
        (_("Times"), {"fields": TIME_FIELDS}),
    )
    readonly_fields = ("worker_list", *TIME_FIELDS)

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

    def lookup_allowed(self, lookup, value, request=None):
        # Django allows any lookup on the model's own fields in the URL. The payload and
        # history columns are refused: filtering by them (?kwargs__email=...,
        # ?args__icontains=...) would let staff test values of redacted tasks one guess at a
        # time, and would scan JSON across millions of rows. The run list, the export and the
        # stream all go through this.
        if lookup.split("__", 1)[0] in HEAVY_FIELDS:
            return False
        return super().lookup_allowed(lookup, value, request)

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

    @admin.display(description=_("created"), ordering="created_at")
    def created(self, obj):
        # Date and time may go on two lines (never inside either), so the list fits 1280 px
        # with the nav sidebar and the filters open.
        day, time = format_when(obj.created_at, seconds=True).split(", ", 1)
        return format_html('<span title="{}"><span class="gyrinx-nowrap">{},</span> '
                           '<span class="gyrinx-nowrap">{}</span></span>',
                           obj.created_at.isoformat(), day, time)

    @admin.display(description=_("duration"))
    def duration(self, obj):
        if not (obj.started_at and obj.finished_at):
            return "-"
        seconds = (obj.finished_at - obj.started_at).total_seconds()
        text = f"{seconds:.2f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
        return format_html('<span class="gyrinx-nowrap">{}</span>', text)

    # The run's times in the admin's one format, to the second (gyrinx_tasks/dates.py); the
    # model fields would render in Django's DATETIME_FORMAT, without seconds.

    def _when(self, value):
        if value is None:
            return self.get_empty_value_display()
        return format_when(value, seconds=True)

    @admin.display(description=_("created at"))
    def created_at_when(self, obj):
        return self._when(obj.created_at)

    @admin.display(description=_("enqueued at"))
    def enqueued_at_when(self, obj):
        return self._when(obj.enqueued_at)

    @admin.display(description=_("started at"))
    def started_at_when(self, obj):
        return self._when(obj.started_at)

    @admin.display(description=_("last attempted at"))
    def last_attempted_at_when(self, obj):
        return self._when(obj.last_attempted_at)

    @admin.display(description=_("finished at"))
    def finished_at_when(self, obj):
        return self._when(obj.finished_at)

    @admin.display(description=_("workers"))
    def worker_list(self, obj):
        return ", ".join(obj.worker_ids) or "-"

    def render_change_form(self, request, context, add=False, change=False, form_url="",
                           obj=None):
        if obj is not None:
            context.update(execution_context(obj, redact=is_redacted(obj.task_name,
                                                                     request.user)))
            context.update(self.retry_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- Retry: the button on a run's page, and the bulk action -------------------------------

    actions = ["retry_selected"]

    def has_retry_permission(self, request) -> bool:
        return has_model_permission(request, self.opts, "retry_taskexecution")

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_retry"
        retry = path("<int:object_id>/retry/", self.admin_site.admin_view(self.retry_view),
                     name=name)
        republish = path("<int:object_id>/republish/",
                         self.admin_site.admin_view(self.republish_view),
                         name=f"{self.opts.app_label}_{self.opts.model_name}_republish")
        panel = path("<int:object_id>/retry/panel/",
                     self.admin_site.admin_view(self.retry_panel_view), name=f"{name}_panel")
        return [retry, republish, panel, *super().get_urls()]

    def retry_context(self, request, obj, new=None, error: str = "",
                      republished: bool = False) -> dict[str, Any]:
        """What the retry panel (taskexecution/_retry.html) shows for ``obj``."""
        retries = list(obj.retries.only("pk", "result_id", "status", "created_at")
                       .order_by("-pk")[:RETRIES_SHOWN + 1])
        allowed = self.has_retry_permission(request)
        already = live_retry_refusal(obj) if obj.status in RETRYABLE else ""
        shown = [*retries[:RETRIES_SHOWN], *([new] if new is not None else [])]
        panel_url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_retry_panel",
                            args=[obj.pk])
        return {
            "original": obj,
            # While a retry shown here is queued or running, the panel re-reads itself so its
            # badge follows the new run until it settles.
            "retry_polling": any(run.status in UNSETTLED for run in shown),
            "retry_panel_url": panel_url + (f"?new={new.pk}" if new is not None else ""),
            "retry_poll_seconds": RETRY_POLL_SECONDS,
            "retry_of": obj.retry_of if obj.retry_of_id else None,
            "retries": retries[:RETRIES_SHOWN],
            "more_retries": len(retries) > RETRIES_SHOWN,
            "can_retry": allowed and obj.status in RETRYABLE and not already,
            "already_retried": already,
            # A READY run whose message may never have reached Pub/Sub (issue 16).
            "can_republish": allowed and obj.status == State.READY
                             and not republish_refusal(obj),
            "retry_new": new,
            "retry_error": error,
            "republished": republished,
        }

    def retry_view(self, request, object_id):
        """POST: retry one run. HTMX gets the panel back; a plain POST is redirected."""
        require(self.has_retry_permission(request))
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        original = get_object_or_404(TaskExecution, pk=object_id)
        new, error = None, ""
        try:
            new = retry_run(original, request.user)
        except RetryPublishFailed as exc:
            new, error = exc.execution, str(exc)
        except RetryError as exc:
            error = str(exc)
        if new is not None:
            audit(request, original, retried_message(new.pk, new.result_id, not error))
        if request.htmx:
            original.refresh_from_db()
            context = {**self.retry_context(request, original, new, error),
                       "opts": self.opts}
            return TemplateResponse(request, RETRY_PANEL, context)
        if error:
            self.message_user(request, error, messages.ERROR)
        else:
            self.message_user(request, f"This run is the retry of {original.result_id}.",
                              messages.SUCCESS)
        target = new or original
        return HttpResponseRedirect(reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[target.pk]))

    def republish_view(self, request, object_id):
        """POST: publish a READY run's message again (its first publish is in doubt)."""
        require(self.has_retry_permission(request))
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = get_object_or_404(TaskExecution, pk=object_id)
        error, published = "", False
        try:
            published = republish_run(run, request.user)
        except RetryError as exc:
            error = str(exc)
        else:
            audit(request, run, "Published again." if published else
                  "Published again; the publish failed, the run stays READY.")
            if not published:
                error = ("Publishing it again failed; the run stays READY with the error "
                         "recorded. Try again once Pub/Sub answers.")
        run.refresh_from_db()
        if request.htmx:
            context = {**self.retry_context(request, run, None, error, published),
                       "opts": self.opts}
            return TemplateResponse(request, RETRY_PANEL, context)
        if error:
            self.message_user(request, error, messages.ERROR)
        else:
            self.message_user(request, "Published again: the run starts when it is delivered.",
                              messages.SUCCESS)
        return HttpResponseRedirect(reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[run.pk]))

    def retry_panel_view(self, request, object_id):
        """GET: the retry panel alone, for its own polling (HTMX); changes nothing."""
        require(self.has_view_permission(request))
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        original = get_object_or_404(TaskExecution, pk=object_id)
        if not request.htmx:
            return HttpResponseRedirect(reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                args=[original.pk]))
        new = None
        if request.GET.get("new", "").isdigit():
            new = original.retries.filter(pk=int(request.GET["new"])).first()
        context = {**self.retry_context(request, original, new), "opts": self.opts}
        return TemplateResponse(request, RETRY_PANEL, context)

    @admin.action(permissions=["retry"], description=_("Retry selected runs"))
    def retry_selected(self, request, queryset):
        require(self.has_retry_permission(request))
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
        across = request.POST.get("select_across") in ("1", "True")
        if across and request.POST.get("confirm") != "yes":
            # "All N matching this filter": say how many, and the cap, before any work.
            selection = count_selection(queryset, limit)
            return TemplateResponse(request, RETRY_CONFIRM, page_context(
                self, request, str(_("Retry runs")),
                selection=selection,
                total_label=capped_count(selection.total, limit),
                retryable_label=capped_count(selection.retryable, limit),
                already_retried_label=capped_count(selection.already_retried, limit),
                limit_label=f"{limit:,}",
                limit_message=limit_message(limit),
                selected=request.POST.getlist(ACTION_CHECKBOX_NAME),
                filters=[(key, value) for key, value in request.GET.items()
                         if key not in ("p", "o")],
                changelist_url=request.get_full_path(),
            ))
        try:
            report = retry_queryset(queryset, request.user, limit,
                                    on_retried=lambda done: self._log_retries(request, done))
        except RetryLimitExceeded as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        for level, text in report_messages(report, limit):
            self.message_user(request, text, level)
        return None

    def _log_retries(self, request, done: list[Retried]) -> None:
        # One LogEntry per retried run (at most TASKS_ADMIN_RETRY_LIMIT per click).
        content_type = ContentType.objects.get_for_model(TaskExecution)
        LogEntry.objects.bulk_create([
            LogEntry(user_id=request.user.pk, content_type=content_type,
                     object_id=str(item.original_id), object_repr=item.original_repr[:200],
                     action_flag=CHANGE,
                     change_message=retried_message(item.new_id, item.new_result_id,
                                                    item.published))
            for item in done
        ])


RETRY_PANEL = "admin/gyrinx_tasks/taskexecution/_retry.html"
RETRY_CONFIRM = "admin/gyrinx_tasks/taskexecution/retry_confirm.html"
RETRIES_SHOWN = 20
RETRY_POLL_SECONDS = 2
UNSETTLED = (State.READY, State.RUNNING)


def retried_message(new_id: int, new_result_id: str, published: bool) -> str:
    message = f"Retried as run {new_id} ({new_result_id})."
    if not published:
        message += " Publishing it failed; the new run is FAILED."
    return message


def capped_count(count: int, limit: int) -> str:
    """A count made with LIMIT limit + 1, as staff read it."""
    return f"more than {limit:,}" if count > limit else f"{count:,}"


def report_messages(report: RetryReport, limit: int) -> list[tuple[int, str]]:
    """The bulk retry's outcome as admin messages: what was done, then what was not."""
    out: list[tuple[int, str]] = [
        (messages.SUCCESS if report.retried else messages.WARNING,
         f"Retried {report.retried:,} run{'s' if report.retried != 1 else ''} as new runs."),
    ]
    if report.already_retried:
        count = capped_count(report.already_retried, limit).capitalize()
        out.append((messages.INFO, f"{count} selected runs were skipped because a retry of "
                                   "each is waiting, running or succeeded; retry those runs "
                                   "instead if they fail."))
    if report.changed:
        out.append((messages.WARNING, f"{report.changed:,} runs changed while they were "
                                      "being retried (a delivery, or another retry) and were "
                                      "left alone; reload the list to see them."))
    if report.not_retryable:
        count = capped_count(report.not_retryable, limit).capitalize()
        out.append((messages.INFO, f"{count} selected runs were not failed, rejected or "
                                   "skipped, and were left alone."))
    for reason, refused in report.refused.items():
        out.append((messages.WARNING, f"{refused:,} not retried: {reason}"))
    if report.publish_failed:
        out.append((messages.ERROR, f"Publishing failed for {report.publish_failed:,} "
                                    "retries; those new runs are recorded as FAILED."))
    return out


def execution_context(obj: Any, redact: bool = False) -> dict[str, Any]:
    """What the detail page shows below the fields: payload, errors, timeline.

    ``redact`` (gyrinx_tasks/redaction.py) hides the args, kwargs, return value, and what
    holds them too: the raw message and the tracebacks.
    """
    note = redaction_note(obj.task_name) if redact else ""

    def shown(value: Any) -> str:
        return note if redact else _pretty(value)

    payload = [(_("Args"), shown(obj.args)), (_("Kwargs"), shown(obj.kwargs))]
    if obj.return_value is not None or obj.status == State.SUCCESSFUL:
        payload.append((_("Return value"), shown(obj.return_value)))
    errors = [
        {
            "attempt": error.get("attempt"),
            "at": _when(error.get("at")),
            "exception_class_path": error.get("exception_class_path", ""),
            # The exception's message often quotes the arguments; its class stays visible.
            "traceback": note if redact else error.get("traceback", ""),
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
        "execution_raw_message": (note if redact and obj.raw_message
                                  else _pretty_text(obj.raw_message)),
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
