"""Run history as CSV: one column definition for the admin export, the stream and the command.

Every cell of every export goes through ``spreadsheet_safe()``, so none is a formula.

``COLUMNS`` is the only list of export columns. Each names its source (a field path or a
database expression), so every exporter reads the same ``values_list`` rows and never loads
model instances or the heavy JSON columns it does not show (tracebacks, timelines):

- ``TaskExecutionResource`` / ``TaskExecutionPayloadResource``: django-import-export's
  resources behind the admin's "Export" button (filtered subsets; any tablib format);
- ``stream_csv()``: ``csv.writer`` over ``.values_list(...).iterator()``, memory flat at any
  size, for the admin's streaming link and ``manage.py tasks_export``.
"""

import csv
import io
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol

from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone
from import_export.fields import Field
from import_export.resources import ModelResource
from import_export.widgets import Widget

from .models import SHOWN_STATUS, ShownStatus, TaskExecution, shown_status_q
from .redaction import REDACTED, shown_task_names

# Rows fetched from the database per round trip (a server-side cursor on PostgreSQL).
CHUNK_SIZE = 2000
# Rows written into the CSV buffer before it is handed to the response or file.
ROWS_PER_WRITE = 500


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR, may
# drop them and read what follows as one). Task names, ids and message ids come from the
# Pub/Sub message, so anyone who can publish could otherwise put "=HYPERLINK(...)" in front
# of the staff member who opens the export.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading apostrophe if a spreadsheet would evaluate it (OWASP's advice).

    Applied to every cell of every export. import-export's own
    IMPORT_EXPORT_ESCAPE_FORMULAE_ON_EXPORT only strips a leading "=", so it is not used.
    """
    return f"'{text}" if text.startswith(FORMULA_TRIGGERS) else text


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _seconds(value: timedelta | None) -> str:
    return "" if value is None else f"{value.total_seconds():.3f}"


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Column:
    """One export column: its CSV header, where its value comes from, how it is written."""

    name: str
    source: Any  # a field path for values_list(), or a database expression
    render: Callable[[Any], str] = _text
    payload: bool = False  # args, kwargs, return value: may hold personal data

    def __str__(self) -> str:
        return self.name


COLUMNS: tuple[Column, ...] = (
    Column("result_id", "result_id"),
    Column("task_id", "task_id"),
    Column("message_id", "message_id"),
    Column("task_name", "task_name"),
    # As staff see it (models.ShownStatus): WILL_RETRY for a failed attempt that Pub/Sub
    # delivers again, FAILED only for runs that failed for good.
    Column("status", SHOWN_STATUS),
    Column("trigger", "trigger"),
    Column("attempts", "attempts"),
    Column("created_at", "created_at", _when),
    Column("enqueued_at", "enqueued_at", _when),
    Column("started_at", "started_at", _when),
    Column("finished_at", "finished_at", _when),
    # From the first start to the outcome, across Pub/Sub's redeliveries.
    Column("duration_seconds",
           ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()),
           _seconds),
    Column("retry_of", "retry_of__result_id"),
    # Read in the database so the tracebacks stored next to it never leave it.
    Column("last_error_class", KT("errors__-1__exception_class_path")),
    Column("args", "args", _json, payload=True),
    Column("kwargs", "kwargs", _json, payload=True),
    Column("return_value", "return_value", _json, payload=True),
)


def columns(include_payload: bool = False) -> tuple[Column, ...]:
    return tuple(column for column in COLUMNS if include_payload or not column.payload)


def headers(include_payload: bool = False) -> list[str]:
    return [column.name for column in columns(include_payload)]


def raw_rows(queryset: QuerySet, cols: Sequence[Column],
             chunk_size: int = CHUNK_SIZE) -> Iterator[tuple]:
    """The columns' database values, row by row, without model instances."""
    return queryset.values_list(*(column.source for column in cols)).iterator(
        chunk_size=chunk_size)


class _RedactedCell(str):
    """A payload cell of a redacted run: written as REDACTED, not rendered as JSON."""


REDACTED_CELL = _RedactedCell(REDACTED)


def redacted_rows(cols: Sequence[Column], values: Iterable[tuple],
                  reveal_redacted: bool = False) -> Iterator[tuple]:
    """``values`` with the payload cells of redacted runs replaced by REDACTED_CELL.

    Redacted: runs of routes with ``redact=True`` and runs of no route in the registry (see
    gyrinx_tasks/redaction.py). ``reveal_redacted`` (the user holds
    view_payload_taskexecution) passes them through.
    """
    payload = [i for i, column in enumerate(cols) if column.payload]
    if reveal_redacted or not payload:
        yield from values
        return
    shown = shown_task_names()
    name_at = [column.name for column in cols].index("task_name")
    for row in values:
        if row[name_at] not in shown:
            row = tuple(REDACTED_CELL if i in payload else value
                        for i, value in enumerate(row))
        yield row


def rows(queryset: QuerySet, include_payload: bool = False,
         chunk_size: int = CHUNK_SIZE, reveal_redacted: bool = False) -> Iterator[list[str]]:
    """Rendered CSV cells for each run in ``queryset``, in its order."""
    cols = columns(include_payload)
    renderers = [column.render for column in cols]
    for values in redacted_rows(cols, raw_rows(queryset, cols, chunk_size), reveal_redacted):
        yield [_cell(render, value) for render, value in zip(renderers, values, strict=True)]


def _cell(render: Callable[[Any], str], value: Any) -> str:
    # A redacted cell is written as is, not as the JSON string "[redacted]".
    return value if isinstance(value, _RedactedCell) else spreadsheet_safe(render(value))


def stream_csv(queryset: QuerySet, include_payload: bool = False,
               chunk_size: int = CHUNK_SIZE,
               reveal_redacted: bool = False) -> Generator[str, None, int]:
    """CSV text in pieces of a few hundred rows: the header, then every run in ``queryset``.

    A generator whose return value (``count = yield from stream_csv(...)``) is the number of
    rows written. Memory stays flat: one chunk of database rows and one buffer at a time.
    Payload cells of routes with ``redact=True`` read REDACTED unless ``reveal_redacted``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(headers(include_payload))
    count = 0
    for row in rows(queryset, include_payload, chunk_size, reveal_redacted):
        writer.writerow(row)
        count += 1
        if count % ROWS_PER_WRITE == 0:
            yield _drain(buffer)
    yield _drain(buffer)
    return count


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


class Writable(Protocol):
    def write(self, text: str, /) -> object: ...


def write_csv(out: Writable, queryset: QuerySet, include_payload: bool = False,
              reveal_redacted: bool = False) -> int:
    """Write the CSV export of ``queryset`` to ``out``; return the number of rows."""
    stream = stream_csv(queryset, include_payload, reveal_redacted=reveal_redacted)
    while True:
        try:
            out.write(next(stream))
        except StopIteration as done:
            return done.value


# --- Filters shared by the command and anyone exporting without the admin -----------------

class ExportFilterError(ValueError):
    """An export filter that cannot be applied; the message says how to fix it."""


def parse_moment(text: str, option: str) -> datetime:
    """An ISO date or date-time; a date means its midnight, a naive time the current zone."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportFilterError(
            f"{option} {text!r} is not a date or time; give an ISO date such as 2026-11-01 "
            "or a date-time such as 2026-11-01T09:30 or 2026-11-01T09:30+00:00."
        ) from None
    if len(text) == 10:  # a bare date: fromisoformat gave midnight
        moment = datetime.combine(date.fromisoformat(text), time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def filter_runs(queryset: QuerySet | None = None, *, statuses: Iterable[str] = (),
                tasks: Iterable[str] = (), since: datetime | None = None,
                until: datetime | None = None) -> QuerySet:
    """Runs by status, task name and creation time (``since`` inclusive, ``until`` not)."""
    if queryset is None:
        queryset = TaskExecution.objects.all()
    statuses = [status.strip().upper() for status in statuses]
    unknown = sorted(set(statuses) - set(ShownStatus.values))
    if unknown:
        raise ExportFilterError(
            f"Unknown status {', '.join(unknown)}; use one of "
            f"{', '.join(ShownStatus.values)}.")
    if since and until and since >= until:
        raise ExportFilterError(
            "--since must be earlier than --until; swap them or widen the range.")
    if statuses:
        queryset = queryset.filter(shown_status_q(*statuses))
    tasks = [task.strip() for task in tasks]
    if tasks:
        queryset = queryset.filter(task_name__in=tasks)
    if since:
        queryset = queryset.filter(created_at__gte=since)
    if until:
        queryset = queryset.filter(created_at__lt=until)
    return queryset


# --- django-import-export --------------------------------------------------------------

class _CellWidget(Widget):
    """Renders a value as its column does in the stream, so both exports agree cell by cell."""

    def __init__(self, render: Callable[[Any], str]) -> None:
        super().__init__(coerce_to_string=True)
        self._render = render

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> str:
        return _cell(self._render, value)


class TaskExecutionResource(ModelResource):
    """Runs without args, kwargs or return value (the default: those may be personal data)."""

    include_payload = False

    class Meta:
        model = TaskExecution
        name = "Runs (without args, kwargs and return value)"
        fields: tuple[str, ...] = ()  # the columns come from COLUMNS, not the model
        chunk_size = CHUNK_SIZE

    def __init__(self, reveal_redacted: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Payload of redacted routes' runs is shown only to users allowed to see it.
        self.reveal_redacted = reveal_redacted
        self.fields = {
            column.name: Field(attribute=column.name, column_name=column.name,
                               widget=_CellWidget(column.render), readonly=True)
            for column in columns(self.include_payload)
        }

    def iter_queryset(self, queryset: Any) -> Iterator[Any]:
        # The rows are the stream's values_list rows as dicts, not model instances, so the
        # admin export reads the same values and never loads the tracebacks.
        if not isinstance(queryset, QuerySet):
            yield from queryset
            return
        names = [column.name for column in columns(self.include_payload)]
        cols = columns(self.include_payload)
        values = raw_rows(queryset, cols, self.get_chunk_size())
        for row in redacted_rows(cols, values, self.reveal_redacted):
            yield dict(zip(names, row, strict=True))


class TaskExecutionPayloadResource(TaskExecutionResource):
    """Runs with args, kwargs and return value: only where the export may hold personal data."""

    include_payload = True

    class Meta(TaskExecutionResource.Meta):
        name = "Runs with args, kwargs and return value (may contain personal data)"
