"""Traces (issue 20, item 4): the enqueuing request's trace travels as a ``traceparent``
message attribute, the run logs with it, and with OpenTelemetry there are publish and run
spans parented on it."""

import asyncio
import io
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.http import HttpResponse
from django.test import RequestFactory
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gyrinx_tasks import runner, traces
from gyrinx_tasks.cloud_logging import CloudLoggingFormatter
from gyrinx_tasks.messages import TRACEPARENT_ATTRIBUTE
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.traces import TraceContextMiddleware, trace_context
from tests import tasks
from tests.helpers import envelope, push

pytestmark = pytest.mark.usefixtures("no_oidc")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def publisher(fake_publisher):
    return fake_publisher


@pytest.fixture
def spans(monkeypatch):
    """gyrinx_tasks' spans go to an in-memory exporter (no global tracer provider is set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(traces, "tracer", lambda: provider.get_tracer("gyrinx_tasks"))
    exporter.provider = provider
    yield exporter
    provider.shutdown()


@pytest.fixture
def records():
    """The records the gyrinx_tasks and django.tasks loggers write, formatted for Cloud
    Logging: ``records()`` answers the entries (dicts) so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    loggers = [logging.getLogger("gyrinx_tasks"), logging.getLogger("django.tasks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def message(task_name="add", args=(2, 3), task_id="t-1"):
    return {"task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": {}}


# --- Where the trace comes from -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"traceparent": TRACEPARENT}, TRACEPARENT),
        ({"traceparent": TRACEPARENT.upper().replace("00-", "00-", 1)}, TRACEPARENT),
        # Cloud Run's header: the span id in decimal, o=1 sampled.
        ({"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)};o=1"}, TRACEPARENT),
        ({"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)};o=0"}, TRACEPARENT[:-2] + "00"),
        ({"X-Cloud-Trace-Context": f"{TRACE_ID}/{int(SPAN_ID, 16)}"}, TRACEPARENT[:-2] + "00"),
        # traceparent wins over the Cloud header.
        (
            {"traceparent": TRACEPARENT, "X-Cloud-Trace-Context": f"{'a' * 32}/1;o=1"},
            TRACEPARENT,
        ),
        ({"traceparent": "garbage"}, ""),
        ({"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, ""),
        ({"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"}, ""),
        ({"X-Cloud-Trace-Context": "not-a-trace"}, ""),
        ({}, ""),
    ],
)
def test_trace_from_request_headers(headers, expected):
    assert traces.from_headers(headers) == expected


def test_cloud_header_without_a_span_gets_a_random_parent_id():
    value = traces.from_cloud_trace(f"{TRACE_ID};o=1")
    assert value.startswith(f"00-{TRACE_ID}-") and value.endswith("-01")
    assert traces.valid_traceparent(value) == value
    assert value != traces.from_cloud_trace(f"{TRACE_ID};o=1")


def test_middleware_makes_the_request_trace_current_only_during_the_request():
    seen = []

    def view(request):
        seen.append(traces.current_traceparent())
        return HttpResponse("ok")

    middleware = TraceContextMiddleware(view)
    request = RequestFactory().get("/", headers={"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"})
    assert middleware(request).status_code == 200
    assert seen == [f"00-{TRACE_ID}-0000000000000001-01"]
    assert traces.current_traceparent() == ""
    middleware(RequestFactory().get("/"))
    assert seen[-1] == ""


def test_middleware_works_under_asgi_too():
    seen = []

    async def view(request):
        seen.append(traces.current_traceparent())
        return HttpResponse("ok")

    middleware = TraceContextMiddleware(view)
    request = RequestFactory().get("/", headers={"traceparent": TRACEPARENT})
    # In a thread of its own: a worker that ran a browser test first has Playwright's event
    # loop running in this one, and asyncio.run() refuses to start inside it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        response = pool.submit(asyncio.run, middleware(request)).result()
    assert response.status_code == 200 and seen == [TRACEPARENT]


# --- Enqueue ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_carries_the_current_trace_as_an_attribute(publisher):
    with trace_context(TRACEPARENT):
        tasks.add.enqueue(1, 2)
    tasks.add.enqueue(3, 4)  # outside any trace: no attribute
    (_, _, inside), (_, _, outside) = publisher.published
    assert inside[TRACEPARENT_ATTRIBUTE] == TRACEPARENT
    assert TRACEPARENT_ATTRIBUTE not in outside


@pytest.mark.django_db
def test_enqueue_many_carries_it_on_every_message(publisher):
    from gyrinx_tasks.backend import enqueue_many

    with trace_context(TRACEPARENT):
        enqueue_many(tasks.add, [((i, i), {}) for i in range(3)])
    assert [attrs[TRACEPARENT_ATTRIBUTE] for _, _, attrs in publisher.published] == [
        TRACEPARENT
    ] * 3


@pytest.mark.django_db
def test_a_request_through_the_middleware_enqueues_with_its_trace(publisher, settings, client):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "gyrinx_tasks.traces.TraceContextMiddleware"]
    settings.ROOT_URLCONF = "tests.urls_enqueue"
    response = client.post("/order/", {"x": 1, "y": 2}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    assert publisher.published[0][2][TRACEPARENT_ATTRIBUTE] == TRACEPARENT


# --- The run ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_run_logs_with_the_message_trace(client, records, monkeypatch):
    inside = []
    original = runner.run_attempt

    def spy(*args, **kwargs):
        inside.append(traces.current_traceparent())
        logging.getLogger("gyrinx_tasks.user_code").warning("from inside the task")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run_attempt", spy)
    logging.getLogger("gyrinx_tasks.user_code").propagate = True
    body = envelope(message(), message_id="m-42", attributes={"traceparent": TRACEPARENT})
    assert push(client, body).status_code == 200

    run = TaskExecution.objects.get(message_id="m-42")
    assert run.status == State.SUCCESSFUL
    assert inside == [TRACEPARENT]  # the run's trace is current while the task runs
    entries = records()
    (user_line,) = [e for e in entries if e["logger"] == "gyrinx_tasks.user_code"]
    (run_line,) = [e for e in entries if e["logger"] == "gyrinx_tasks"]
    # Django's own lines about the run (django.tasks) join the trace too.
    assert all(e["logging.googleapis.com/trace"].endswith(TRACE_ID) for e in entries)
    for entry in (user_line, run_line):
        assert entry["logging.googleapis.com/trace"] == f"projects/test-project/traces/{TRACE_ID}"
        assert entry["logging.googleapis.com/spanId"] == SPAN_ID
        assert entry["logging.googleapis.com/trace_sampled"] is True
    assert run_line["severity"] == "INFO"
    assert run_line["message"].startswith(f"Task tests.tasks.add ({run.result_id}) attempt 1 ")
    labels = run_line["logging.googleapis.com/labels"]
    assert {k: labels[k] for k in ("task", "result_id", "message_id", "attempt")} == {
        "task": "add",
        "result_id": run.result_id,
        "message_id": "m-42",
        "attempt": "1",
    }
    assert labels["duration"].endswith("s") and run_line["duration_seconds"] >= 0
    assert traces.current_traceparent() == ""  # nothing left behind


@pytest.mark.django_db
def test_a_failed_run_logs_its_error_with_the_trace(client, records):
    body = envelope(message("explode", args=()), attributes={"traceparent": TRACEPARENT})
    push(client, body)
    error = [e for e in records() if e["severity"] == "ERROR"][-1]
    assert error["logging.googleapis.com/trace"].endswith(TRACE_ID)
    assert error["logging.googleapis.com/labels"]["task"] == "explode"


@pytest.mark.django_db
def test_a_malformed_traceparent_is_ignored(client, records):
    body = envelope(message(), attributes={"traceparent": "00-xyz"})
    assert push(client, body).status_code == 200
    assert all("logging.googleapis.com/trace" not in entry for entry in records())


def test_formatter_uses_the_current_trace_when_the_record_has_none():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    formatter = CloudLoggingFormatter(project="p")
    assert "logging.googleapis.com/trace" not in formatter.entry(record)
    with trace_context(TRACEPARENT):
        entry = formatter.entry(record)
    assert entry["logging.googleapis.com/trace"] == f"projects/p/traces/{TRACE_ID}"
    assert entry["logging.googleapis.com/spanId"] == SPAN_ID


# --- OpenTelemetry spans --------------------------------------------------------------------


@pytest.mark.django_db
def test_spans_for_publish_and_run_share_the_request_trace(publisher, client, spans):
    tracer = spans.provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /order/", kind=SpanKind.SERVER) as request_span:
        result = tasks.add.enqueue(20, 22)
    _, _, attributes = publisher.published[0]
    (publish,) = [s for s in spans.get_finished_spans() if s.name == "publish add"]
    request_context = request_span.get_span_context()
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent.span_id == request_context.span_id
    assert publish.context.trace_id == request_context.trace_id
    assert publish.attributes["messaging.system"] == "gcp_pubsub"
    assert publish.attributes["messaging.destination.name"].endswith(
        "/topics/test--gyrinx.tasks--tests.tasks.add"
    )
    # The message carries the publish span's context, so the run is its child.
    assert attributes[TRACEPARENT_ATTRIBUTE] == (
        f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-"
        f"{int(publish.context.trace_flags):02x}"
    )

    body = envelope(
        message(args=(20, 22), task_id=result.id),
        message_id="m-7",
        attributes=attributes,
        delivery_attempt=1,
    )
    push(client, body)
    (run,) = [s for s in spans.get_finished_spans() if s.name == "run add"]
    assert run.kind == SpanKind.CONSUMER
    assert run.context.trace_id == request_context.trace_id
    assert run.parent.span_id == publish.context.span_id
    assert run.attributes["messaging.message.id"] == "m-7"
    assert run.attributes["gyrinx_tasks.result_id"] == result.id
    assert run.attributes["gyrinx_tasks.outcome"] == "ran"
    assert run.status.status_code == StatusCode.UNSET


@pytest.mark.django_db
def test_a_span_is_parented_on_the_middleware_trace_without_a_request_span(publisher, spans):
    with trace_context(TRACEPARENT):
        tasks.add.enqueue(1, 1)
    (publish,) = spans.get_finished_spans()
    assert f"{publish.context.trace_id:032x}" == TRACE_ID
    assert f"{publish.parent.span_id:016x}" == SPAN_ID


@pytest.mark.django_db
def test_a_failed_run_span_records_the_error(client, spans):
    push(client, envelope(message("explode", args=()), attributes={"traceparent": TRACEPARENT}))
    (run,) = spans.get_finished_spans()
    assert f"{run.context.trace_id:032x}" == TRACE_ID
    assert run.status.status_code == StatusCode.ERROR
    assert [event.name for event in run.events] == ["exception"]


@pytest.mark.django_db
def test_a_run_without_a_trace_starts_its_own(client, spans):
    push(client, envelope(message()))
    (run,) = spans.get_finished_spans()
    assert run.parent is None


@pytest.mark.django_db
def test_without_opentelemetry_the_attribute_still_travels(publisher, client, monkeypatch, records):
    traces._otel.cache_clear()
    monkeypatch.setattr(traces, "_otel", lambda: None)
    with trace_context(TRACEPARENT):
        tasks.add.enqueue(1, 2)
    attributes = publisher.published[0][2]
    assert attributes[TRACEPARENT_ATTRIBUTE] == TRACEPARENT
    push(client, envelope(message(), attributes=attributes))
    (run_line,) = [e for e in records() if e["logger"] == "gyrinx_tasks"]
    assert run_line["logging.googleapis.com/spanId"] == SPAN_ID


# --- Through the emulator -------------------------------------------------------------------


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_the_attribute_round_trips_through_the_emulator(
    settings, pubsub_emulator, live_server, emulator_push, records, monkeypatch
):
    settings.TASKS_ENVIRONMENT = "tr" + secrets.token_hex(4)
    settings.TASKS = {
        **settings.TASKS,
        "default": {
            **settings.TASKS["default"],
            "OPTIONS": {"project_id": pubsub_emulator.project},
        },
    }
    emulator_push("add", f"{live_server.url}/tasks/pubsub/")
    seen = []
    original = runner.run_attempt

    def spy(execution, delivery, *args, **kwargs):
        seen.append((delivery.attributes.get(TRACEPARENT_ATTRIBUTE), traces.current_traceparent()))
        return original(execution, delivery, *args, **kwargs)

    monkeypatch.setattr(runner, "run_attempt", spy)
    with trace_context(TRACEPARENT):
        result = tasks.add.enqueue(20, 22)

    def run_lines():
        return [e for e in records()
                if e.get("logging.googleapis.com/labels", {}).get("result_id") == result.id]

    # The live server's thread records the outcome, then logs it: wait for both.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (TaskExecution.objects.filter(result_id=result.id, status=State.SUCCESSFUL).exists()
                and run_lines()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the run did not finish and log within 60 s")
    assert seen == [(TRACEPARENT, TRACEPARENT)]
    run_line = run_lines()[-1]
    assert run_line["logging.googleapis.com/trace"].endswith(f"/traces/{TRACE_ID}")
    assert run_line["logging.googleapis.com/spanId"] == SPAN_ID


@pytest.mark.django_db
def test_run_now_carries_the_trace_too(publisher):
    from gyrinx_tasks.registry import get_route
    from gyrinx_tasks.scheduling.firing import fire_scheduled

    with trace_context(TRACEPARENT):
        fire_scheduled(get_route("nightly_cleanup"), requested_by="admin")
    assert publisher.published[0][2][TRACEPARENT_ATTRIBUTE] == TRACEPARENT


def test_without_a_tracer_provider_no_span_is_made(monkeypatch):
    # The API's default (proxy) provider: spans would go nowhere, so none is started.
    assert traces.tracer() is None
    with traces.run_span("add", "m-1", TRACEPARENT, None) as span:
        assert span is None
        assert traces.current_traceparent() == TRACEPARENT
