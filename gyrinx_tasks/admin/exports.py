"""Export on the run changelist: django-import-export for filtered subsets, a CSV stream for all.

Both honour the changelist's current filters and search, need the
``gyrinx_tasks.export_taskexecution`` permission (checked on every request), export on POST
only and write a ``LogEntry`` saying who exported how many runs with which filters.
"""

from collections.abc import Generator, Iterator
from typing import Any

from django.contrib import messages
from django.contrib.admin.models import LogEntry
from django.contrib.admin.options import IncorrectLookupParameters
from django.http import (
    HttpRequest,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from import_export.admin import ExportMixin
from import_export.formats.base_formats import CSV
from import_export.forms import SelectableFieldsExportForm

from ..export import TaskExecutionPayloadResource, TaskExecutionResource, stream_csv
from ..models import TaskExecution
from ..redaction import can_view_payload
from .base import audit, has_model_permission, require, reword_audit

# Query parameters of the changelist that are not filters.
NOT_FILTERS = {"p", "o", "e", "_changelist_filters"}


class ExecutionExportForm(SelectableFieldsExportForm):
    """import-export's export form with CSV chosen up front."""

    def __init__(self, formats: list, resources: list, **kwargs: Any) -> None:
        super().__init__(formats, resources, **kwargs)
        csv_index = next((i for i, fmt in enumerate(formats) if fmt is CSV), None)
        if csv_index is not None:
            self.fields["format"].initial = str(csv_index)


class ExecutionExportMixin(ExportMixin):
    """Mix into TaskExecutionAdmin before ModelAdmin."""

    resource_classes = [TaskExecutionResource, TaskExecutionPayloadResource]
    export_form_class = ExecutionExportForm
    import_export_change_list_template = "admin/gyrinx_tasks/taskexecution/change_list.html"
    export_template_name = "admin/gyrinx_tasks/taskexecution/export.html"
    # The most runs the in-memory export builds in one request (subclass to change).
    export_max_rows = 100_000
    # The most runs an export may name by id in ``export_items`` (import-export's field for
    # an action's selection; a selection on the run list is at most a page of it).
    export_items_max = 200

    def has_export_permission(self, request: HttpRequest) -> bool:
        # An export shows what the list shows, so it needs view permission as well.
        return self.has_view_permission(request) and has_model_permission(
            request, TaskExecution._meta, "export_taskexecution")

    def get_export_resource_kwargs(self, request: HttpRequest, **kwargs: Any) -> dict[str, Any]:
        # Runs of redact=True routes keep their payload out of the file for users without
        # view_payload_taskexecution (gyrinx_tasks/redaction.py).
        return {**super().get_export_resource_kwargs(request, **kwargs),
                "reveal_redacted": can_view_payload(request.user)}

    def get_export_formats(self) -> list:
        formats = super().get_export_formats()
        return sorted(formats, key=lambda fmt: fmt is not CSV)  # CSV first, the others after

    def get_export_filename(self, request: HttpRequest, queryset: Any, file_format: Any) -> str:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return f"task-executions-{stamp}.{file_format.get_extension()}"

    def get_urls(self) -> list:
        info = self.get_model_info()
        view = self.admin_site.admin_view
        return [
            path("export/stream/", view(self.stream_export_view),
                 {"include_payload": False}, name="{}_{}_export_stream".format(*info)),
            path("export/stream/payload/", view(self.stream_export_view),
                 {"include_payload": True}, name="{}_{}_export_stream_payload".format(*info)),
            *super().get_urls(),
        ]

    def export_action(self, request: HttpRequest) -> Any:
        if request.method == "POST" and "export_items" in request.POST:
            require(self.has_export_permission(request))
            refused = check_export_items(request.POST.getlist("export_items"),
                                         self.export_items_max)
            if refused:
                return HttpResponseBadRequest(refused, content_type="text/plain; charset=utf-8")
        try:
            return super().export_action(request)
        except IncorrectLookupParameters:
            return self._bad_filters(request)

    def get_valid_export_item_pks(self, request: HttpRequest) -> list[int]:
        # import-export (4.x) makes every pk in the table a choice of the export_items field,
        # then scans those choices once per submitted value: minutes at a million runs. Only
        # the submitted ids can be valid, and export_action has capped how many there are.
        # Overriding this hook is import-export's documented way to restrict the pks.
        items = [int(item) for item in request.POST.getlist("export_items")]
        return list(TaskExecution.objects.filter(pk__in=items).values_list("pk", flat=True))

    def get_data_for_export(self, request: HttpRequest, queryset: Any, **kwargs: Any) -> Any:
        # import-export builds the whole file in memory, so its time and memory grow with the
        # rows (docs/performance.md has the figures); one click may not ask for more than this; the
        # stream, which holds one batch of rows at a time, may.
        # Counting stops one row past the limit, so the check stays cheap at any size.
        if queryset.order_by()[: self.export_max_rows + 1].count() > self.export_max_rows:
            # export_action shows a ValueError as an error message above the form.
            raise ValueError(
                f"These filters match more than {self.export_max_rows:,} runs, too many to "
                "build in memory here. Narrow the filters on the run list, or use "
                "\"Stream CSV\" below, which writes any number of runs row by row.")
        dataset = super().get_data_for_export(request, queryset, **kwargs)
        form = kwargs.get("export_form")
        cleaned = getattr(form, "cleaned_data", None) or {}
        file_format = "CSV"
        if cleaned.get("format") not in (None, ""):
            file_format = self.get_export_formats()[int(cleaned["format"])]().get_title()
        resource = self.choose_export_resource_class(form, request)
        what = "with args, kwargs and return value" if resource.include_payload else (
            "without payload")
        self._audit(request, f"Exported {len(dataset)} runs as {file_format.upper()} ({what}; "
                             f"columns: {', '.join(dataset.headers)}; "
                             f"{describe_filters(request)}).")
        return dataset

    def init_request_context_data(self, request: HttpRequest, form: Any) -> dict[str, Any]:
        context = super().init_request_context_data(request, form)
        context["title"] = _("Export task executions")
        context["export_filters"] = describe_filters(request)
        context["stream_query"] = _query_string(request)
        context["export_max_rows"] = f"{self.export_max_rows:,}"
        return context

    def stream_export_view(self, request: HttpRequest, include_payload: bool) -> Any:
        """POST: every run matching the changelist's filters as CSV, streamed row by row.

        An export writes a LogEntry and may carry payloads, so it happens on POST (with
        Django's CSRF check) only: a link on another site cannot start one. A GET writes
        nothing and goes to the export page, whose buttons post here.
        """
        require(self.has_export_permission(request))
        if request.method != "POST":
            return HttpResponseRedirect(
                reverse("admin:{}_{}_export".format(*self.get_model_info()),
                        current_app=self.admin_site.name)
                + _query_string(request) + "#gyrinx-stream")
        try:
            queryset = self.get_export_queryset(request)
        except IncorrectLookupParameters:
            return self._bad_filters(request)
        what = "with args, kwargs and return value" if include_payload else "without payload"
        entry = self._audit(request, f"Started a streamed CSV export of runs ({what}; "
                                     f"{describe_filters(request)}).")
        response = StreamingHttpResponse(
            _audited(stream_csv(queryset, include_payload,
                                reveal_redacted=can_view_payload(request.user)), entry),
            content_type="text/csv; charset=utf-8",
        )
        filename = self.get_export_filename(request, queryset, CSV())
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def _audit(self, request: HttpRequest, message: str) -> LogEntry:
        return audit(request, "export", message, model=TaskExecution)

    def _bad_filters(self, request: HttpRequest) -> HttpResponseRedirect:
        messages.error(request, _(
            "The export's filters are not ones the run list knows. Open the run list, choose "
            "the filters there, then use its Export link."))
        return HttpResponseRedirect(
            reverse("admin:{}_{}_changelist".format(*self.get_model_info()),
                    current_app=self.admin_site.name))


def check_export_items(items: list[str], limit: int) -> str:
    """Why a list of run ids posted as ``export_items`` is refused, or "" if it is fine."""
    if len(items) > limit:
        return (f"An export can name at most {limit} runs by id, and this one names "
                f"{len(items):,}. Filter the run list instead and export what it shows.")
    if not all(item.isascii() and item.isdigit() and len(item) <= 18 for item in items):
        return "export_items must be run ids (whole numbers); export from the run list."
    return ""


def _audited(stream: Generator[str, None, int], entry: LogEntry) -> Iterator[str]:
    """Pass the stream through; once complete, add the row count to its LogEntry."""
    count = yield from stream
    # Written only when the last row has gone out: an interrupted download keeps "Started".
    reword_audit(entry, entry.change_message.replace("Started a", "Completed a", 1).rstrip(".")
                 + f"; {count} row{'' if count == 1 else 's'}.")


def _query_string(request: HttpRequest) -> str:
    query = request.GET.copy()
    for name in NOT_FILTERS - {"o"}:
        query.pop(name, None)
    encoded = query.urlencode()
    return f"?{encoded}" if encoded else ""


def describe_filters(request: HttpRequest) -> str:
    """The changelist filters and search of ``request``, for the audit log and the page."""
    parts = [f"{name}={value}" for name, value in request.GET.items()
             if name not in NOT_FILTERS and name != "q"]
    search = request.GET.get("q", "").strip()
    if search:
        parts.append(f"search {search!r}")
    return "filters: " + ", ".join(parts) if parts else "no filters: every run"
