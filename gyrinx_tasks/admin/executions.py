"""The task run pages: a changelist that stays fast at millions of rows, a read-only detail."""

import json
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import ShowFacets
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, DateTimeField, F, OuterRef, Subquery
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .. import spans
from ..abandon import (
    AbandonReport,
    abandon_queryset,
    abandon_refusal,
    abandon_run,
    attempt_started,
    count_abandon_selection,
)
from ..cancellation import (
    Cancelled,
    CancelReport,
    cancel_queryset,
    cancel_run,
    refusal,
)
from ..cancellation import count_selection as count_cancel_selection
from ..conf import tasks_settings
from ..dates import format_when
from ..expressions import last_error_class
from ..health import StuckKind
from ..models import SHOWN_STATUS, ShownStatus, State, TaskExecution
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
    republish_queryset,
    republish_refusal,
    republish_run,
    retry_queryset,
    retry_run,
)
from ..search import search
from .base import (
    ActionPermissionMixin,
    AuditedAdmin,
    audit,
    audit_many,
    has_model_permission,
    page_context,
    require,
)
from .exports import ExecutionExportMixin
from .filters import RecoveryFilter, StatusFilter, StuckFilter, TaskNameFilter, TriggerFilter
from .pagination import EstimatedCountPaginator

# Columns the changelist never shows and which can hold long tracebacks or payloads.
HEAVY_FIELDS = ("args", "kwargs", "return_value", "errors", "timeline", "raw_message",
                "worker_ids", "status_detail")


TIME_FIELDS = ("created_at_when", "enqueued_at_when", "started_at_when",
               "last_attempted_at_when", "finished_at_when")
# Range lookups the URL may carry on time and id columns (the overview's window links, the
# bulk retry's link to its new runs). Django applies them without showing them anywhere; the
# list shows each as a chip with a link that removes it.
RANGE_LOOKUPS = {"gte": "from", "gt": "after", "lte": "up to", "lt": "until"}


class ExecutionChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer(*HEAVY_FIELDS)

    def get_results(self, request):
        super().get_results(request)
        # One query for the page's rows, never for the whole list: the last error's class
        # (read in the database, so the tracebacks beside it stay there) and the retries.
        rows = list(self.result_list)
        extras = page_extras([row.pk for row in rows])
        for row in rows:
            row.__dict__.update(extras.get(row.pk, {}))
        self.result_list = rows
        self.range_chips = range_chips(self, request)
        self.stuck_help = stuck_help(request.GET.get(StuckFilter.parameter_name, ""))


def stuck_help(value: str) -> list[dict[str, str]]:
    """What each kind of stuck run the "stuck" filter shows means, and how to recover it."""
    kinds = list(StuckKind) if value == StuckFilter.ANY else [
        kind for kind in StuckKind if kind.value == value]
    return [{"kind": kind.value, "label": kind.label, "recovery": kind.recovery}
            for kind in kinds]


def page_extras(pks: list[int]) -> dict[int, dict[str, Any]]:
    """Per run: its last error's class, its newest retry and how many, the run it retries."""
    if not pks:
        return {}
    retries = TaskExecution.objects.filter(retry_of=OuterRef("pk")).order_by("-pk")
    rows = TaskExecution.objects.filter(pk__in=pks).values(
        "pk",
        error_class=last_error_class(),
        retry_count=Subquery(retries.order_by().values("retry_of").annotate(
            n=Count("pk")).values("n")[:1]),
        latest_retry_pk=Subquery(retries.values("pk")[:1]),
        latest_retry_result_id=Subquery(retries.values("result_id")[:1]),
        # As staff see it: a retry failing with a redelivery to come reads so (models.py).
        latest_retry_status=Subquery(retries.annotate(shown=SHOWN_STATUS).values("shown")[:1]),
        retry_of_result_id=F("retry_of__result_id"),
    )
    return {row["pk"]: {key: value for key, value in row.items() if key != "pk"}
            for row in rows}


def range_chips(cl: ChangeList, request) -> list[dict[str, str]]:
    """The URL's range lookups on time and id columns, one chip per column, in words."""
    fields = {field.name: field for field in cl.model._meta.concrete_fields
              if isinstance(field, DateTimeField) or field.primary_key}
    chips = []
    for name, field in fields.items():
        keys = [f"{name}__{lookup}" for lookup in RANGE_LOOKUPS]
        parts = []
        for key in keys:
            if key in request.GET:
                value = request.GET[key]
                if isinstance(field, DateTimeField):
                    value = _chip_time(value)
                parts.append(f"{RANGE_LOOKUPS[key.rsplit('__', 1)[1]]} {value}")
        if parts:
            label = "run id" if field.primary_key else str(field.verbose_name)
            chips.append({
                "label": label[:1].upper() + label[1:],
                "text": " ".join(parts),
                "remove_url": cl.get_query_string(remove=keys),
            })
    return chips


def _chip_time(value: str) -> str:
    parsed = parse_datetime(value.replace(" ", "+")) if value else None
    if parsed is None:
        return value
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return format_when(parsed, seconds=True)


class TaskExecutionAdmin(ExecutionExportMixin, ActionPermissionMixin, AuditedAdmin):
    change_form_template = "admin/gyrinx_tasks/taskexecution/change_form.html"

    # Compact, unwrapped times and a duration instead of three long dates, so the list fits
    # 1400 px with the filter sidebar (the enqueue time is on each run's page).
    # The retries of a run show under its status, and the run a retry retries under its
    # trigger, so the list keeps its width.
    list_display = ("short_result_id", "task", "status_badge", "error_class",
                    "trigger_cell", "attempts", "created", "duration")
    list_filter = (StatusFilter, RecoveryFilter, StuckFilter, TriggerFilter, TaskNameFilter)
    # Only columns with an index behind them; sorting by others would sort the whole table.
    sortable_by = ("created",)
    search_fields = ("=result_id", "=task_id", "=message_id")  # see get_search_results
    search_help_text = _("A task's name or path (or part of it), an exception class such as "
                         "RuntimeError, or an exact result id, message task id or Pub/Sub "
                         "message id. Several words must all match.")
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

    # The recovery filter checks each candidate's retries, so its list counts only this far
    # ("more than 1,000"): a bounded number of index probes, however many runs failed.
    recovery_count_cap = 1_000

    def get_paginator(self, request, queryset, per_page, orphans=0,
                      allow_empty_first_page=True):
        paginator = super().get_paginator(request, queryset, per_page, orphans,
                                          allow_empty_first_page)
        if request.GET.get(RecoveryFilter.parameter_name) and isinstance(
                paginator, EstimatedCountPaginator):
            paginator.count_cap = self.recovery_count_cap
        return paginator

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
        # Django's search would be icontains (or iexact with "="), which no index serves at
        # millions of runs; gyrinx_tasks.search answers each kind of word from an index.
        return search(queryset, search_term), False

    @admin.display(description=_("result id"))
    def short_result_id(self, obj):
        return obj.result_id[:8]

    @admin.display(description=_("status"))
    def status_badge(self, obj):
        shown = obj.shown_status  # FAILED with a retry to come reads "Failing, will retry"
        return format_html(
            '<span class="gyrinx-status gyrinx-status-{}">{}</span>{}',
            shown.lower(), shown.label, self.retried(obj),
        )

    # "task", not the field's "task name": the header is wider than most names, and the list
    # must fit 1280 px with the nav sidebar and the filters open.
    @admin.display(description=_("task"))
    def task(self, obj):
        return obj.task_name

    @admin.display(description=_("trigger"))
    def trigger_cell(self, obj):
        if obj.retry_of_id and getattr(obj, "retry_of_result_id", None):
            return format_html('{} <span class="gyrinx-retry-of gyrinx-nowrap">{} '
                               '<a href="{}">{}</a></span>', obj.get_trigger_display(),
                               _("of"), _change_url(obj.retry_of_id),
                               obj.retry_of_result_id[:8])
        return obj.get_trigger_display()

    @admin.display(description=_("last error"))
    def error_class(self, obj):
        path = getattr(obj, "error_class", None)
        if not path:
            return "-"
        return format_html('<code class="gyrinx-error-class" title="{}">{}</code>', path,
                           path.rsplit(".", 1)[-1])

    def retried(self, obj):
        """The newest retry of this run (link and state) and how many more, or ""."""
        pk = getattr(obj, "latest_retry_pk", None)
        if not pk:
            return ""
        count = getattr(obj, "retry_count", 0) or 1
        status = ShownStatus(obj.latest_retry_status)
        more = ""
        if count > 1:
            more = format_html(' <a class="gyrinx-more-retries" href="{}?retry_of={}" title="{}">'
                               '+{}</a>',
                               reverse("admin:gyrinx_tasks_taskexecution_changelist"), obj.pk,
                               _("All retries of this run"), count - 1)
        return format_html(
            '<div class="gyrinx-retried">{} <a href="{}">{}</a> '
            '<span class="gyrinx-status gyrinx-status-{}">{}</span>{}</div>',
            _("retried as"), _change_url(pk), obj.latest_retry_result_id[:8], status.lower(),
            status.label, more)

    # The zone is the same on every row, so it is printed once, above the list.
    @admin.display(description=_("created"), ordering="created_at")
    def created(self, obj):
        # Date and time may go on two lines (never inside either), so the list fits 1280 px
        # with the nav sidebar and the filters open.
        day, time = format_when(obj.created_at, seconds=True, zone=False).split(", ", 1)
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
            context.update(self.cancel_context(request, obj))
            context.update(self.abandon_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- Retry: the button on a run's page, and the bulk action -------------------------------

    actions = ["retry_selected", "cancel_selected", "republish_selected", "abandon_selected"]

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
        cancel = path("<int:object_id>/cancel/", self.admin_site.admin_view(self.cancel_view),
                      name=f"{self.opts.app_label}_{self.opts.model_name}_cancel")
        abandon = path("<int:object_id>/abandon/",
                       self.admin_site.admin_view(self.abandon_view),
                       name=f"{self.opts.app_label}_{self.opts.model_name}_abandon")
        return [retry, republish, panel, cancel, abandon, *super().get_urls()]

    def retry_context(self, request, obj, new=None, error: str = "",
                      republished: bool = False) -> dict[str, Any]:
        """What the retry panel (taskexecution/_retry.html) shows for ``obj``."""
        retries = list(obj.retries.only("pk", "result_id", "status", "created_at", "gave_up",
                                        "attempts", "message_id")
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
        new, error = _new_run(retry_run, original, request.user)
        if new is not None:
            audit(request, original, retried_message(
                new.pk, new.result_id, not error, bool(error) and new.status == State.READY))
        if request.htmx:
            original.refresh_from_db()
            context = {**self.retry_context(request, original, new, error),
                       "opts": self.opts}
            return TemplateResponse(request, RETRY_PANEL, context)
        if error:
            self.message_user(request, error, messages.ERROR)
        else:
            self.message_user(request, format_html(
                'Retried run <a href="{}">{}</a> of {}: this is the new run.',
                _change_url(original.pk), original.result_id[:8], original.task_name),
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
            return self.across_confirmation(
                request, RETRY_CONFIRM, str(_("Retry runs")), "retry_selected", limit,
                selection=selection, to_do=selection.retryable,
                total_label=capped_count(selection.total, limit),
                retryable_label=capped_count(selection.retryable, limit),
                already_retried_label=capped_count(selection.already_retried, limit),
                limit_message=limit_message(limit))
        new_ids: list[int] = []

        def retried(done: list[Retried]) -> None:
            new_ids.extend(item.new_id for item in done if item.new_id)
            self._log_retries(request, done)

        try:
            report = retry_queryset(queryset, request.user, limit, on_retried=retried)
        except RetryLimitExceeded as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        for level, text in report_messages(report, limit, new_runs_link(new_ids)):
            self.message_user(request, text, level)
        return None

    @admin.action(permissions=["retry"], description=_("Publish selected READY runs again"))
    def republish_selected(self, request, queryset):
        """The bulk "Publish again": the recovery of stuck READY runs (the "stuck" filter)."""
        require(self.has_retry_permission(request))
        try:
            report = republish_queryset(queryset, request.user)
        except RetryLimitExceeded as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        self._log_changes(request, [  # one per run published again, as the button writes
            (pk, label, "Published again." if confirmed else
             "Published again; the publish failed, the run stays READY.")
            for pk, label, confirmed in report.runs])
        published = report.republished + report.publish_failed
        if published:
            self.message_user(request, f"Published {published:,} run(s) again: each starts "
                                       "when it is delivered, once.", messages.SUCCESS)
        if report.publish_failed:
            self.message_user(request, f"Pub/Sub did not confirm {report.publish_failed:,} of "
                                       "them; they stay READY with the error recorded.",
                              messages.ERROR)
        if report.changed:
            self.message_user(request, f"{report.changed:,} run(s) changed meanwhile (a "
                                       "delivery) and were left alone.", messages.WARNING)
        for reason, count in report.refused.items():
            self.message_user(request, f"{count:,} not published again: {reason}",
                              messages.WARNING)
        if not published and not report.refused and not report.changed:
            self.message_user(request, "None of the selected runs is READY; only READY runs "
                                       "can be published again.", messages.WARNING)
        return None

    def across_confirmation(self, request, template: str, title: str, action: str,
                            limit: int, **extra: Any) -> TemplateResponse:
        """The page a bulk action shows before working on every run matching the filter
        (select-across): its counts (made by the action, counted no further than the cap)
        and a form that posts the action again with confirm=yes. The templates extend
        taskexecution/across_confirm.html."""
        return TemplateResponse(request, template, page_context(
            self, request, title,
            action=action,
            limit_label=f"{limit:,}",
            selected=request.POST.getlist(ACTION_CHECKBOX_NAME),
            filters=[(key, value) for key, value in request.GET.items()
                     if key not in ("p", "o")],
            changelist_url=request.get_full_path(),
            **extra,
        ))

    def _log_changes(self, request, entries: list[tuple[int, str, str]]) -> None:
        """One LogEntry per (run pk, run repr, message): at most the cap per click."""
        audit_many(request, TaskExecution, entries)

    def _log_retries(self, request, done: list[Retried]) -> None:
        self._log_changes(request, [
            (item.original_id, item.original_repr,
             retried_message(item.new_id, item.new_result_id, item.published,
                             item.unconfirmed))
            for item in done])

    # --- Cancel: the button on a READY run's page, and the bulk action ------------------------

    def has_cancel_permission(self, request) -> bool:
        return has_model_permission(request, self.opts, "cancel_taskexecution")

    def cancel_context(self, request, obj, error: str = "",
                       cancelled: bool = False) -> dict[str, Any]:
        """What the cancel panel (taskexecution/_cancel.html) shows for ``obj``: the button
        for a READY run, or why a RUNNING one cannot be cancelled; only with the permission."""
        allowed = self.has_cancel_permission(request)
        reason = refusal(obj) if allowed and obj.status in UNSETTLED else ""
        if reason and obj.status == State.RUNNING and not abandon_refusal(obj):
            # Past its ack deadline "wait for it to end" may mean waiting for ever: say what
            # recovers it (the give-up panel beside this one, with the retry permission).
            reason = STUCK_NOT_CANCELLABLE
        return {
            "can_cancel": allowed and obj.status == State.READY and not reason,
            "cancel_refusal": reason,
            "cancel_error": error,
            "cancelled_now": cancelled,
        }

    def cancel_view(self, request, object_id):
        """POST: cancel one READY run. HTMX gets the panel back; a plain POST is redirected
        to the run's page."""
        require(self.has_cancel_permission(request))
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = get_object_or_404(TaskExecution, pk=object_id)
        done = cancel_run(run, request.user)
        if done.cancelled:
            audit(request, run, CANCELLED_MESSAGE)
        run.refresh_from_db()
        error = "" if done.cancelled else done.detail
        if request.htmx:
            context = {**self.cancel_context(request, run, error, done.cancelled),
                       "original": run, "opts": self.opts}
            return TemplateResponse(request, CANCEL_PANEL, context)
        if error:
            self.message_user(request, error, messages.ERROR)
        else:
            self.message_user(request, "Cancelled: the task will not run.", messages.SUCCESS)
        return HttpResponseRedirect(reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[run.pk]))

    @admin.action(permissions=["cancel"], description=_("Cancel selected runs"))
    def cancel_selected(self, request, queryset):
        require(self.has_cancel_permission(request))
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
        across = request.POST.get("select_across") in ("1", "True")
        if across and request.POST.get("confirm") != "yes":
            selection = count_cancel_selection(queryset, limit)
            return self.across_confirmation(
                request, CANCEL_CONFIRM, str(_("Cancel runs")), "cancel_selected", limit,
                selection=selection, to_do=selection.cancellable,
                total_label=capped_count(selection.total, limit),
                cancellable_label=capped_count(selection.cancellable, limit),
                running_label=capped_count(selection.running, limit),
                limit_message=limit_message(limit, "cancelled", "cancel"))

        def cancelled(done: list[Cancelled]) -> None:
            self._log_changes(request, [(item.pk, item.label, CANCELLED_MESSAGE)
                                        for item in done])

        try:
            report = cancel_queryset(queryset, request.user, limit, on_cancelled=cancelled)
        except RetryLimitExceeded as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        for level, text in cancel_messages(report, limit):
            self.message_user(request, text, level)
        return None

    # --- Give up and retry: a RUNNING run past its ack deadline (abandon.py) ------------------
    # The retry permission: what it does is a retry (a new run of the task), and the original
    # is settled as a retry settles a run Pub/Sub still redelivers.

    def abandon_context(self, request, obj, confirming: bool = False, new=None,
                        error: str = "") -> dict[str, Any]:
        """What the panel (taskexecution/_abandon.html) shows for ``obj``: only for a RUNNING
        run (or the one just given up), only with the retry permission."""
        allowed = self.has_retry_permission(request)
        shown = allowed and (obj.status == State.RUNNING or new is not None or bool(error))
        reason = abandon_refusal(obj) if shown and obj.status == State.RUNNING else ""
        started = attempt_started(obj) if obj.status == State.RUNNING else None
        return {
            "abandon_shown": shown,
            "can_abandon": shown and obj.status == State.RUNNING and not reason,
            "abandon_refusal": reason,
            "abandon_confirming": confirming and not reason,
            "abandon_started": started,
            "abandon_new": new,
            "abandon_error": error,
            "abandon_url": reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_abandon",
                                   args=[obj.pk]),
        }

    def abandon_view(self, request, object_id):
        """GET: the confirmation (HTMX: the panel in its place; otherwise a page). POST with
        confirm=yes: give the attempt up and retry the run; HTMX gets the panel back, a plain
        POST is redirected to the new run (or to the run, with the reason it was refused)."""
        require(self.has_retry_permission(request))
        if request.method not in ("GET", "HEAD", "POST"):
            return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
        run = get_object_or_404(TaskExecution, pk=object_id)
        if request.method != "POST" or request.POST.get("confirm") != "yes":
            context = {**self.abandon_context(request, run, confirming=True),
                       "original": run, "opts": self.opts}
            if request.htmx:
                return TemplateResponse(request, ABANDON_PANEL, context)
            return TemplateResponse(request, ABANDON_PAGE, {**page_context(
                self, request, str(_("Give up and retry")), change_url=_change_url(run.pk)),
                **context})
        new, error = _new_run(abandon_run, run, request.user)
        if new is not None:
            audit(request, run, abandoned_message(new.pk, new.result_id, not error,
                                                  bool(error) and new.status == State.READY))
        run.refresh_from_db()
        if request.htmx:
            context = {**self.abandon_context(request, run, new=new, error=error),
                       "original": run, "opts": self.opts}
            return TemplateResponse(request, ABANDON_PANEL, context)
        if error:
            self.message_user(request, error, messages.ERROR)
        if new is not None and not error:
            self.message_user(request, format_html(
                'Gave up run <a href="{}">{}</a> of {} as lost and retried it: this is the new '
                "run.", _change_url(run.pk), run.result_id[:8], run.task_name),
                messages.SUCCESS)
        return HttpResponseRedirect(_change_url((new or run).pk))

    @admin.action(permissions=["retry"],
                  description=_("Give up and retry selected stuck runs"))
    def abandon_selected(self, request, queryset):
        """The bulk form of the run page's "Give up and retry": always asks first (the task
        may run twice if a worker is still alive), with the counts and the cap."""
        require(self.has_retry_permission(request))
        limit = tasks_settings.TASKS_ADMIN_RETRY_LIMIT
        if request.POST.get("confirm") != "yes":
            selection = count_abandon_selection(queryset, limit)
            return TemplateResponse(request, ABANDON_CONFIRM, page_context(
                self, request, str(_("Give up and retry stuck runs")),
                action="abandon_selected",
                selection=selection,
                across=request.POST.get("select_across") in ("1", "True"),
                selected=request.POST.getlist(ACTION_CHECKBOX_NAME),
                filters=[(key, value) for key, value in request.GET.items()
                         if key not in ("p", "o")],
                changelist_url=request.get_full_path(),
                total_label=capped_count(selection.total, limit),
                abandonable_label=capped_count(selection.abandonable, limit),
                within_label=capped_count(selection.within_deadline, limit),
                already_label=capped_count(selection.already_retried, limit),
                limit_label=f"{limit:,}",
                limit_message=limit_message(limit, "given up and retried",
                                            "give up and retry"),
            ))
        new_ids: list[int] = []

        def abandoned(done: list[Retried]) -> None:
            new_ids.extend(item.new_id for item in done if item.new_id)
            self._log_changes(request, [
                (item.original_id, item.original_repr,
                 abandoned_message(item.new_id, item.new_result_id, item.published,
                                   item.unconfirmed))
                for item in done])

        try:
            report = abandon_queryset(queryset, request.user, limit, on_abandoned=abandoned)
        except RetryLimitExceeded as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        for level, text in abandon_messages(report, limit, new_runs_link(new_ids)):
            self.message_user(request, text, level)
        return None


ABANDON_PANEL = "admin/gyrinx_tasks/taskexecution/_abandon.html"
ABANDON_PAGE = "admin/gyrinx_tasks/taskexecution/abandon_page.html"
ABANDON_CONFIRM = "admin/gyrinx_tasks/taskexecution/abandon_confirm.html"
CANCEL_PANEL = "admin/gyrinx_tasks/taskexecution/_cancel.html"
CANCEL_CONFIRM = "admin/gyrinx_tasks/taskexecution/cancel_confirm.html"
CANCELLED_MESSAGE = "Cancelled before it started: the task will not run."
RETRY_PANEL = "admin/gyrinx_tasks/taskexecution/_retry.html"
RETRY_CONFIRM = "admin/gyrinx_tasks/taskexecution/retry_confirm.html"
RETRIES_SHOWN = 20
RETRY_POLL_SECONDS = 2
UNSETTLED = (State.READY, State.RUNNING)
# Why a run RUNNING past its ack deadline cannot be cancelled, and what to do instead.
STUCK_NOT_CANCELLABLE = (
    "The run has been running past its ack deadline: its worker may have died. A task that "
    "has started cannot be cancelled; Give up and retry (it needs the retry permission) "
    "settles this attempt and runs the task again as a new run.")


def _new_run(make: Any, run: TaskExecution, user: Any) -> tuple[Any, str]:
    """(the new run, "") from ``make(run, user)`` (retry_run or abandon_run); (the new run,
    why its publish failed) when it was recorded but not published; (None, why) when it was
    refused."""
    try:
        return make(run, user), ""
    except RetryPublishFailed as exc:
        return exc.execution, str(exc)
    except RetryError as exc:
        return None, str(exc)


def retried_message(new_id: int, new_result_id: str, published: bool,
                    unconfirmed: bool = False) -> str:
    """The audit entry of a retry, saying what became of the new run's publish."""
    message = f"Retried as run {new_id} ({new_result_id})."
    if unconfirmed:
        message += (" Publishing it was not confirmed; the new run stays READY and runs if "
                    "Pub/Sub delivers it.")
    elif not published:
        message += " Publishing it failed; the new run is FAILED."
    return message


def abandoned_message(new_id: int, new_result_id: str, published: bool,
                      unconfirmed: bool = False) -> str:
    """The audit entry of a run given up as lost and retried (abandon.py)."""
    return ("Gave up the running attempt as lost (past its ack deadline). "
            + retried_message(new_id, new_result_id, published, unconfirmed))


def abandon_messages(report: AbandonReport, limit: int,
                     link: str = "") -> list[tuple[int, str]]:
    """The bulk "give up and retry"'s outcome as admin messages."""
    made = report.retried + report.publish_failed
    return _new_runs_messages(
        report, limit, link, succeeded=bool(made),
        done=("Gave up 1 stuck run and retried it as a new run" if made == 1 else
              f"Gave up {made:,} stuck runs and retried them as new runs"),
        running=(report.within_deadline, "selected runs are running within their ack "
                 "deadline and were left alone: they may really be running."),
        skipped="selected runs were skipped because a retry of each is waiting, running or "
        "succeeded.",
        changed="runs changed while they were being given up (a redelivery started them "
        "again, or their outcome was recorded) and were left alone.",
        not_retryable="selected runs were not running and were left alone.",
        not_done="not given up")


def capped_count(count: int, limit: int) -> str:
    """A count made with LIMIT limit + 1, as staff read it."""
    return f"more than {limit:,}" if count > limit else f"{count:,}"


def _change_url(pk: int) -> str:
    return reverse("admin:gyrinx_tasks_taskexecution_change", args=[pk])


def new_runs_link(new_ids: list[int]) -> str:
    """Where the runs a bulk retry made are: the one run's page, or the list of them.

    The list is the retries whose ids lie between the first and the last new run's, so a
    retry someone else made in the same moment can show up beside them.
    """
    if not new_ids:
        return ""
    if len(new_ids) == 1:
        return _change_url(new_ids[0])
    query = urlencode({"trigger": "retry", "id__gte": min(new_ids), "id__lte": max(new_ids)})
    return f"{reverse('admin:gyrinx_tasks_taskexecution_changelist')}?{query}"


def report_messages(report: RetryReport, limit: int,
                    link: str = "") -> list[tuple[int, str]]:
    """The bulk retry's outcome as admin messages: what was done, then what was not."""
    return _new_runs_messages(
        report, limit, link, succeeded=bool(report.retried),
        done=(f"Retried {report.retried:,} run as a new run" if report.retried == 1
              else f"Retried {report.retried:,} runs as new runs"),
        skipped="selected runs were skipped because a retry of each is waiting, running or "
        "succeeded; retry those runs instead if they fail.",
        changed="runs changed while they were being retried (a delivery, or another retry) "
        "and were left alone; reload the list to see them.",
        not_retryable="selected runs were not failed, rejected or skipped, and were left alone.",
        not_done="not retried")


def _new_runs_messages(report: RetryReport | AbandonReport, limit: int, link: str, *,
                       succeeded: bool, done: str, skipped: str, changed: str,
                       not_retryable: str, not_done: str,
                       running: tuple[int, str] = (0, "")) -> list[tuple[int, str]]:
    """The outcome of a bulk action that makes new runs (retry; give up and retry) as admin
    messages: what was done, linking to the new runs; then, where there are any, the runs
    left alone (each sentence follows its count) and the runs not done (`not_done`: reason);
    last, the new runs whose publish failed."""
    made = report.retried + report.publish_failed
    out: list[tuple[int, str]] = [(
        messages.SUCCESS if succeeded else messages.WARNING,
        format_html('{}: <a href="{}">{}</a>.', done, link,
                    "see it" if made == 1 else f"see the {made:,} new runs")
        if link and made else f"{done}.",
    )]
    # The counts made with LIMIT limit + 1 (capped), and the exact ones.
    for level, capped, count, sentence in [
        (messages.INFO, True, *running),
        (messages.INFO, True, report.already_retried, skipped),
        (messages.WARNING, False, report.changed, changed),
        (messages.INFO, True, report.not_retryable, not_retryable),
        *[(messages.WARNING, False, number, f"{not_done}: {reason}")
          for reason, number in report.refused.items()],
    ]:
        if count:
            shown = capped_count(count, limit).capitalize() if capped else f"{count:,}"
            out.append((level, f"{shown} {sentence}"))
    if report.publish_failed:
        out.append((messages.ERROR, f"Publishing failed for {report.publish_failed:,} "
                                    "retries; those new runs are recorded as FAILED, or stay "
                                    "READY where Pub/Sub may have their message after all."))
    return out


def cancel_messages(report: CancelReport, limit: int) -> list[tuple[int, str]]:
    """The bulk cancel's outcome as admin messages: what was done, then what was not."""
    out: list[tuple[int, str]] = [(
        messages.SUCCESS if report.cancelled else messages.WARNING,
        "Cancelled 1 run: its task will not run." if report.cancelled == 1 else
        f"Cancelled {report.cancelled:,} runs: their tasks will not run.")]
    if report.running:
        count = capped_count(report.running, limit).capitalize()
        out.append((messages.WARNING, f"{count} selected runs were running and were left "
                                      "alone: a task that has started cannot be stopped."))
    if report.changed:
        out.append((messages.WARNING, f"{report.changed:,} runs started (or changed) while "
                                      "they were being cancelled and were left alone; reload "
                                      "the list to see them."))
    if report.ended:
        count = capped_count(report.ended, limit).capitalize()
        out.append((messages.INFO, f"{count} selected runs were not ready (they had ended, "
                                   "or failed and will be delivered again) and were left "
                                   "alone; only READY runs can be cancelled."))
    for reason, refused in report.refused.items():
        out.append((messages.WARNING, f"{refused:,} not cancelled: {reason}"))
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
        "execution_attempts": attempt_rows(obj),
        "execution_spans": span_bar(obj),
        "execution_timeline": timeline,
        "execution_raw_message": (note if redact and obj.raw_message
                                  else _pretty_text(obj.raw_message)),
    }


ATTEMPT_NOTE = re.compile(r"^attempt (\d+) on (.+)$")


def attempt_rows(obj: Any) -> list[dict[str, Any]]:
    """One row per attempt, read from the timeline: when it started and finished, how long
    it waited (since the enqueue, or since the previous attempt ended) and ran, where, and
    how it ended (with the error's class). An attempt that never recorded an end (its worker
    died, or its ack deadline passed) ends when the next one starts, marked as cut off."""
    classes = {error.get("attempt"): error.get("exception_class_path", "")
               for error in obj.errors or [] if isinstance(error, dict)}
    rows: list[dict[str, Any]] = []
    ready_since = obj.enqueued_at or obj.created_at
    current: dict[str, Any] | None = None
    for entry in obj.timeline or []:
        if not isinstance(entry, dict):
            continue
        at = _when(entry.get("at"))
        if not isinstance(at, datetime):
            continue
        if entry.get("to") == State.RUNNING:
            if current is not None and current["finished"] is None:
                current["outcome"] = "cut off"
            match = ATTEMPT_NOTE.match(entry.get("note") or "")
            number = int(match.group(1)) if match else len(rows) + 1
            current = {"number": number, "worker": match.group(2) if match else "",
                       "started": at, "finished": None, "ran_ms": None, "outcome": "running",
                       "error_class": classes.get(number, ""),
                       "waited": _seconds(at - ready_since) if ready_since else None}
            rows.append(current)
        elif (entry.get("from") == State.RUNNING and current is not None
              and current["finished"] is None):
            current["finished"] = ready_since = at
            current["ran_ms"] = round((at - current["started"]).total_seconds() * 1000)
            current["outcome"] = State(entry["to"]).label if entry.get("to") in State.values \
                else entry.get("to", "")
    return rows


def span_bar(obj: Any) -> dict[str, Any] | None:
    """The run's waiting, running and backoff spans (gyrinx_tasks/spans.py) as a bar whose
    parts are as wide as they were long, and the total of each kind."""
    found = spans.run_spans(obj)
    if not found:
        return None
    whole = sum((span.length for span in found), timedelta(0)).total_seconds()

    def width(span: spans.Span) -> str:
        share = span.length.total_seconds() / whole if whole else 1 / len(found)
        return f"{share * 100:.3f}"

    parts = [{"span": span, "kind": span.kind, "label": span.label,
              "length": _seconds(span.length), "width": width(span)} for span in found]
    summed = spans.totals(found)
    return {"parts": parts,
            "totals": [{"kind": kind, "label": spans.LABELS[kind], "length": _seconds(length),
                        "count": sum(1 for span in found if span.kind == kind)}
                       for kind, length in summed.items()]}


def _seconds(delta: Any) -> str:
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


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
