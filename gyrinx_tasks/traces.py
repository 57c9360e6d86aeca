"""Trace context from the request that enqueues a task to the run it causes.

An enqueue puts the caller's trace context on the message as a W3C ``traceparent`` attribute
(messages.TRACEPARENT_ATTRIBUTE); the push endpoint runs the task inside that context, so its
log lines (cloud_logging.CloudLoggingFormatter) and spans join the caller's trace.

Where the enqueue learns the caller's trace, first found wins:

1. the current OpenTelemetry span, when OpenTelemetry is installed and a span is active (e.g.
   the request's span of opentelemetry-instrumentation-django);
2. the trace of the current request, which ``TraceContextMiddleware`` (optional: add it to
   ``MIDDLEWARE``) reads from its ``traceparent`` header or, converted, from Cloud Run's
   ``X-Cloud-Trace-Context``;
3. ``trace_context(value)``, for code outside a request (a management command, a worker).

With OpenTelemetry installed, each enqueue is a PRODUCER span ("publish <task>") and each run
a CONSUMER span ("run <task>") whose parent is the enqueue's: one trace shows the request,
the publish and the run. OpenTelemetry is optional (the ``otel`` extra); without it, the
``traceparent`` still travels and the run's log lines still carry the trace. docs/cloud-run.md
has the details.
"""

import functools
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"
TRACEPARENT_RE = re.compile(
    r"00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)
CLOUD_TRACE_RE = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>\d+))?(?:;o=(?P<o>[0-9]+))?")
TRACER_NAME = "gyrinx_tasks"

_current: ContextVar[str] = ContextVar("gyrinx_tasks_traceparent", default="")


def valid_traceparent(value: str) -> str:
    """``value`` if it is a W3C traceparent (version 00, ids not all zeros), else ""."""
    value = (value or "").strip().lower()
    match = TRACEPARENT_RE.fullmatch(value)
    if not match or set(match["trace"]) == {"0"} or set(match["span"]) == {"0"}:
        return ""
    return value


def from_cloud_trace(value: str) -> str:
    """A W3C traceparent from an ``X-Cloud-Trace-Context`` (``TRACE/SPAN;o=1``, the span in
    decimal), or "". A header without a span gets a random parent id."""
    match = CLOUD_TRACE_RE.fullmatch((value or "").strip())
    if not match or set(match["trace"]) == {"0"}:
        return ""
    span = int(match["span"]) if match["span"] else 0
    if not 0 < span < 2**64:
        span = int.from_bytes(secrets.token_bytes(8)) or 1
    flags = "01" if match["o"] == "1" else "00"
    return f"00-{match['trace'].lower()}-{span:016x}-{flags}"


def from_headers(headers: Mapping[str, str]) -> str:
    """The traceparent a request carries: its ``traceparent``, else its
    ``X-Cloud-Trace-Context`` converted; "" when it has neither (or they are malformed)."""
    return valid_traceparent(headers.get(TRACEPARENT_HEADER, "")) or from_cloud_trace(
        headers.get(CLOUD_TRACE_HEADER, "")
    )


@contextmanager
def trace_context(traceparent: str) -> Iterator[str]:
    """Make ``traceparent`` the current trace inside this block (invalid values: none)."""
    token = _current.set(valid_traceparent(traceparent))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


class TraceContextMiddleware:
    """Makes the request's trace (``traceparent`` or ``X-Cloud-Trace-Context``) the current
    one while Django handles it, so enqueues carry it and log lines show it. Optional."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        with trace_context(from_headers(request.headers)):
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        with trace_context(from_headers(request.headers)):
            return await self.get_response(request)


# --- OpenTelemetry, when installed -----------------------------------------------------------


@functools.cache
def _otel() -> Any:
    """The OpenTelemetry API modules, or None when it is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return trace, TraceContextTextMapPropagator()


def tracer() -> Any:
    """The tracer of gyrinx_tasks' spans; None without OpenTelemetry, or while no tracer
    provider is configured (spans would go nowhere, and even a no-op span costs time on
    every enqueue)."""
    otel = _otel()
    if otel is None:
        return None
    trace = otel[0]
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider.get_tracer(TRACER_NAME)


def _otel_traceparent() -> str:
    otel = _otel()
    if otel is None:
        return ""
    context = otel[0].get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str:
    """The current trace as a traceparent: the active OpenTelemetry span's, else the one set
    by the middleware or trace_context(); "" when there is none."""
    return _otel_traceparent() or _current.get()


def _parent(traceparent: str) -> Any:
    """The OpenTelemetry context to start a span in: the active span's, else the given
    traceparent's (None: the current context)."""
    otel = _otel()
    if otel is None or _otel_traceparent() or not traceparent:
        return None
    return otel[1].extract({TRACEPARENT_HEADER: traceparent})


@contextmanager
def _span(name: str, kind: str, traceparent: str, attributes: dict[str, Any]) -> Iterator[Any]:
    otel, spans = _otel(), tracer()
    if otel is None or spans is None:
        with trace_context(traceparent):
            yield None
        return
    trace = otel[0]
    with spans.start_as_current_span(
        name,
        context=_parent(traceparent),
        kind=getattr(trace.SpanKind, kind),
        attributes=attributes,
    ) as span:
        # Code that reads only the context variable (the formatter's fallback, enqueues made
        # by the task) sees this span too; without an SDK it is the parent's context.
        with trace_context(_otel_traceparent() or traceparent):
            yield span


def publish_span(task_name: str, topic_path: str, count: int = 1) -> Any:
    """The span of one enqueue (or of ``count`` by enqueue_many), a child of the current
    trace; messages prepared inside it carry its traceparent."""
    attributes: dict[str, Any] = {
        "messaging.system": "gcp_pubsub",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic_path,
        "gyrinx_tasks.task": task_name,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    return _span(f"publish {task_name}", "PRODUCER", current_traceparent(), attributes)


def run_span(
    task_name: str, message_id: str, traceparent: str, delivery_attempt: int | None
) -> Any:
    """The span of one delivery's run, a child of the traceparent the message carries (or
    of nothing); inside it, the run's trace is the current one."""
    attributes: dict[str, Any] = {
        "messaging.system": "gcp_pubsub",
        "messaging.operation.type": "process",
        "messaging.message.id": message_id,
        "gyrinx_tasks.task": task_name,
    }
    if delivery_attempt is not None:
        attributes["messaging.gcp_pubsub.message.delivery_attempt"] = delivery_attempt
    return _span(f"run {task_name}", "CONSUMER", valid_traceparent(traceparent), attributes)


def end_run_span(
    span: Any, outcome: str, result_id: str, attempt: int | None, error: BaseException | None
) -> None:
    """Record the run's outcome on its span (no-op without OpenTelemetry)."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("gyrinx_tasks.outcome", outcome)
    if result_id:
        span.set_attribute("gyrinx_tasks.result_id", result_id)
    if attempt is not None:
        span.set_attribute("gyrinx_tasks.attempt", attempt)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
