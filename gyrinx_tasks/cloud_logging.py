"""Log records as Cloud Logging's structured JSON, one object a line, for Cloud Run.

Cloud Run sends what a container writes to stdout and stderr to Cloud Logging, and reads a
line that is a JSON object as a structured entry: ``severity``, ``message``, ``time`` and the
``logging.googleapis.com/...`` fields become the entry's own fields, everything else lands in
``jsonPayload``. Use it from ``LOGGING``::

    "formatters": {"cloud": {"()": "gyrinx_tasks.cloud_logging.CloudLoggingFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "cloud"}},

Nothing here imports Google libraries or needs credentials; docs/cloud-run.md has the details.
"""

import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .conf import tasks_settings
from .traces import current_traceparent

# Record attributes (``logger.info(..., extra={"task": ...})``) written as entry labels.
LABELS = ("task", "result_id", "message_id", "attempt", "duration")
TRACE = "logging.googleapis.com/trace"
SPAN = "logging.googleapis.com/spanId"
SAMPLED = "logging.googleapis.com/trace_sampled"

TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-"
                            r"(?P<flags>[0-9a-f]{2})")
CLOUD_TRACE_RE = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>\d+))?(?:;o=(?P<o>[01]))?")
TRACE_PATH_RE = re.compile(r"projects/[^/]+/traces/[0-9a-fA-F]{32}")


def severity(levelno: int) -> str:
    """Cloud Logging's LogSeverity for a logging level (custom levels round down)."""
    for floor, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"),
                        (logging.WARNING, "WARNING"), (logging.INFO, "INFO"),
                        (logging.DEBUG, "DEBUG")):
        if levelno >= floor:
            return name
    return "DEFAULT"


def parse_trace(value: str) -> tuple[str, str, bool | None]:
    """(trace id or full trace path, span id in hex, sampled) from a W3C ``traceparent``,
    an ``X-Cloud-Trace-Context`` (``TRACE/SPAN;o=1``, span in decimal), a bare trace id or a
    ``projects/P/traces/T`` path; ("", "", None) when it is none of these."""
    value = value.strip()
    if match := TRACEPARENT_RE.fullmatch(value):
        if set(match["trace"]) == {"0"} or set(match["span"]) == {"0"}:
            return "", "", None  # all-zero ids are invalid in W3C trace context
        return match["trace"], match["span"], bool(int(match["flags"], 16) & 1)
    if TRACE_PATH_RE.fullmatch(value):
        return value, "", None
    if match := CLOUD_TRACE_RE.fullmatch(value):
        span = f"{int(match['span']):016x}" if match["span"] else ""
        sampled = None if match["o"] is None else match["o"] == "1"
        return match["trace"].lower(), span, sampled
    return "", "", None


def _request_trace(record: logging.LogRecord) -> str:
    """The trace header of the request a record carries (Django's request loggers do)."""
    headers = getattr(getattr(record, "request", None), "headers", None)
    if headers is None:
        return ""
    try:
        return str(headers.get("traceparent") or headers.get("X-Cloud-Trace-Context") or "")
    except AttributeError:
        return ""


def _label(name: str, value: Any) -> str:
    if name == "duration":
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        return f"{seconds:.3f}s"
    return str(value)


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one line of Cloud Logging structured JSON.

    Every argument is optional. ``project`` is the Google Cloud project whose Cloud Trace the
    ``logging.googleapis.com/trace`` field points into; by default the ``GCP_PROJECT_ID``
    setting, else the ``GOOGLE_CLOUD_PROJECT`` environment variable. The other arguments are
    ``logging.Formatter``'s; ``fmt`` (``format`` in ``LOGGING``) shapes ``message``.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None,
                 style: Any = "%", validate: bool = True, *,
                 defaults: dict[str, Any] | None = None, project: str | None = None) -> None:
        super().__init__(fmt, datefmt, style, validate, defaults=defaults)
        self.project = project

    def trace_project(self) -> str:
        if self.project:
            return self.project
        try:
            project = tasks_settings.GCP_PROJECT_ID
        except ImproperlyConfigured:  # used before (or without) Django settings
            project = ""
        return project or os.environ.get("GOOGLE_CLOUD_PROJECT", "")

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.entry(record), ensure_ascii=False, default=str)

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The structured entry as a dict (``format()`` writes it as JSON)."""
        record.message = record.getMessage()
        message = self.formatMessage(record)
        if record.exc_info:
            # A stack trace inside `message` is what Error Reporting picks up.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace(
                "+00:00", "Z"),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname, "line": record.lineno, "function": record.funcName},
        }
        labels = {name: _label(name, getattr(record, name)) for name in LABELS
                  if getattr(record, name, None) not in (None, "")}
        if labels:
            entry["logging.googleapis.com/labels"] = labels
        if "duration" in labels:
            duration = record.duration  # type: ignore[attr-defined]
            entry["duration_seconds"] = (duration.total_seconds()
                                         if isinstance(duration, timedelta) else float(duration))
        self._add_trace(entry, str(getattr(record, "trace", "") or "") or _request_trace(record)
                        or current_traceparent())
        return entry

    def _add_trace(self, entry: dict[str, Any], value: str) -> None:
        trace, span, sampled = parse_trace(value) if value else ("", "", None)
        if not trace:
            return
        if not trace.startswith("projects/"):
            project = self.trace_project()
            if not project:  # a bare id links to nothing; keep it searchable instead
                entry["trace_id"] = trace
                return
            trace = f"projects/{project}/traces/{trace}"
        entry[TRACE] = trace
        if span:
            entry[SPAN] = span
        if sampled is not None:
            entry[SAMPLED] = sampled
