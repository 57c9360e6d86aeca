"""The enqueue side of a run's life (issue 16, behaviours 1, 2 and 4): a failed publish is
recorded only on a run no delivery has touched, any transient error leaves the run READY
"unconfirmed", and arguments JSON cannot carry are refused before anything happens."""

import math
import re
import threading
from concurrent import futures
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.test import Client
from django.utils import timezone
from google.api_core.exceptions import DeadlineExceeded, ServiceUnavailable

from gyrinx_tasks import clients
from gyrinx_tasks.backend import enqueue_many
from gyrinx_tasks.exceptions import InvalidTaskArguments, TaskPublishError
from gyrinx_tasks.models import PUBLISH_UNCONFIRMED, State, TaskExecution
from gyrinx_tasks.retry import retry_queryset
from tests import tasks
from tests.helpers import FakePublisher, envelope, push, use_publisher


class AcceptedThenFailed(FakePublisher):
    """Pub/Sub stored each message, then the answer to the publish was lost: waiting for the
    publish raises ``error`` after ``on_stored`` (a delivery of the message) has happened."""

    def __init__(self, error: Exception, on_stored: Any) -> None:
        super().__init__()
        self.failure, self.on_stored = error, on_stored

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future:
        accepted = super().publish(topic, data, **attrs)
        message = self.published[-1][1]
        publisher = self

        class Lost(Future):
            def result(self, timeout: float | None = None) -> Any:
                accepted.result()
                publisher.on_stored(message, attrs)
                raise publisher.failure

        return Lost()


def deliver(message: dict, attrs: dict) -> None:
    """Pub/Sub pushes the stored message: the task runs and its outcome is recorded."""
    response = push(Client(), envelope(message, message_id=f"m-{message['task_id']}",
                                       attributes=attrs))
    assert response.status_code == 200, response.content


def claimed_elsewhere(message: dict, attrs: dict) -> None:
    """A delivery on another instance has claimed the run and is running the task."""
    TaskExecution.objects.filter(result_id=message["task_id"]).update(
        status=State.RUNNING, attempts=1, started_at=timezone.now(),
        last_attempted_at=timezone.now())


@pytest.fixture
def publisher_slot():
    yield use_publisher
    task_backends["default"].__dict__.pop("publisher", None)


@pytest.fixture
def backend_options(settings):
    """Set OPTIONS of the default backend for one test (the backend is rebuilt)."""
    def set_options(**options: Any) -> None:
        default = settings.TASKS["default"]
        settings.TASKS = {**settings.TASKS, "default": {
            **default, "OPTIONS": {**default["OPTIONS"], **options}}}

    return set_options


# -- behaviour 1: a failed publish never overwrites what a delivery recorded ----------------

@pytest.mark.django_db
@pytest.mark.parametrize("error", [DeadlineExceeded("answer lost"),
                                   ServiceUnavailable("answer lost")])
def test_a_publish_that_fails_after_the_task_ran_leaves_the_run_as_the_delivery_recorded(
        no_oidc, publisher_slot, error):
    publisher_slot(AcceptedThenFailed(error, deliver))

    result = tasks.add.enqueue(2, 3)  # the message arrived: not an error for the caller

    run = TaskExecution.objects.get(result_id=result.id)
    # Before issue 16: the enqueue's stale copy was saved over it (READY, attempts 0).
    assert (run.status, run.attempts, run.return_value) == (State.SUCCESSFUL, 1, 5)
    assert run.errors == [] and run.status_detail == ""
    assert result.status == TaskResultStatus.READY and result.errors == []


@pytest.mark.django_db
def test_a_publish_that_fails_while_a_delivery_runs_the_task_does_not_fail_the_run(
        no_oidc, publisher_slot):
    publisher_slot(AcceptedThenFailed(ServiceUnavailable("answer lost"), claimed_elsewhere))

    result = tasks.add.enqueue(2, 3)

    run = TaskExecution.objects.get(result_id=result.id)
    # Before: FAILED "never delivered" under the running delivery, whose outcome then lost
    # its compare-and-set ("superseded") while the FAILED run was delivered and run again.
    assert (run.status, run.attempts) == (State.RUNNING, 1)
    # The running delivery records its outcome as usual.
    response = push(Client(), envelope({"task_id": run.result_id, "task_name": "add",
                                        "args": [2, 3], "kwargs": {}},
                                       message_id="m-redelivered", delivery_attempt=2))
    assert response.status_code in (200, 429)
    assert TaskExecution.objects.get(pk=run.pk).status != State.FAILED


def _enqueue_many(publisher: FakePublisher) -> list[str]:
    return [r.id for r in enqueue_many(tasks.add, [((n, 1), {}) for n in range(3)])]


def _flush_on_commit(publisher: FakePublisher) -> list[str]:
    with transaction.atomic():
        return [tasks.add.enqueue(n, 1).id for n in range(3)]


def _bulk_retry(publisher: FakePublisher) -> list[str]:
    originals = [TaskExecution.objects.create(
        task_name="add", task_path="tests.tasks.add", args=[n, 1], status=State.REJECTED)
        for n in range(3)]
    retry_queryset(TaskExecution.objects.filter(pk__in=[o.pk for o in originals]), limit=10)
    return list(TaskExecution.objects.filter(retry_of__in=originals)
                .values_list("result_id", flat=True))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [_enqueue_many, _flush_on_commit, _bulk_retry],
                         ids=["enqueue_many", "publish_on_commit flush", "bulk retry"])
def test_bulk_paths_never_record_never_delivered_over_a_run_that_ran(
        no_oidc, publisher_slot, backend_options, path):
    backend_options(publish_on_commit=path is _flush_on_commit)
    publisher = AcceptedThenFailed(ServiceUnavailable("answer lost"), deliver)
    publisher_slot(publisher)

    ids = path(publisher)

    runs = TaskExecution.objects.filter(result_id__in=ids)
    assert len(ids) == 3
    # Before: FAILED "never delivered" (attempts 0) after each task ran.
    assert sorted(runs.values_list("status", "attempts")) == [(State.SUCCESSFUL, 1)] * 3


# -- behaviour 2: any transient error at the deadline leaves the run READY, unconfirmed ------

class FlakyPublisherService:
    """An in-process gRPC Pub/Sub Publisher answering each Publish with the next code."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        from google.pubsub_v1 import PublishRequest, PublishResponse

        self.codes, self.calls = codes, 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self.publish, request_deserializer=PublishRequest.deserialize,
            response_serializer=PublishResponse.serialize)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher", {"Publish": handler})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.lock = threading.Lock()

    def publish(self, request: Any, context: Any) -> Any:
        with self.lock:
            code = self.codes[min(self.calls, len(self.codes) - 1)]
            self.calls += 1
        context.abort(code, f"the fake Pub/Sub answers {code.name}")


@pytest.fixture
def flaky_pubsub(monkeypatch, publisher_slot, backend_options):
    """A real PublisherClient talking to FlakyPublisherService; publish_timeout 1.5 s."""
    services = []

    def start(codes: list[grpc.StatusCode]) -> FlakyPublisherService:
        service = FlakyPublisherService(codes)
        service.server.start()
        services.append(service)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{service.port}")
        backend_options(publish_timeout=1.5)
        publisher_slot(clients.publisher_client())
        return service

    yield start
    for service in services:
        service.server.stop(None)


@pytest.mark.django_db
@pytest.mark.parametrize("codes", [
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE],
    [grpc.StatusCode.UNAVAILABLE],
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.PERMISSION_DENIED],
], ids=["unavailable after deadline exceeded", "unavailable", "refused after a timeout"])
def test_a_publish_out_of_time_on_a_transient_error_leaves_the_run_ready_and_unconfirmed(
        flaky_pubsub, codes):
    service = flaky_pubsub(codes)

    with pytest.raises(TaskPublishError, match="READY, publish unconfirmed"):
        tasks.add.enqueue(1, 2)

    run = TaskExecution.objects.get()
    assert service.calls >= len(codes)  # the client retried until the deadline
    # Before issue 16: FAILED "never delivered", though Pub/Sub may have stored a try.
    assert (run.status, run.status_detail) == (State.READY, PUBLISH_UNCONFIRMED)
    assert run.finished_at is None


@pytest.mark.django_db
def test_a_publish_pubsub_refuses_at_once_is_still_failed_never_delivered(flaky_pubsub):
    flaky_pubsub([grpc.StatusCode.PERMISSION_DENIED])

    with pytest.raises(TaskPublishError, match="recorded as FAILED"):
        tasks.add.enqueue(1, 2)

    run = TaskExecution.objects.get()
    assert run.status == State.FAILED
    assert run.errors[-1]["exception_class_path"].endswith("PermissionDenied")


@pytest.mark.django_db
def test_bulk_publishes_out_of_time_on_a_transient_error_stay_ready(flaky_pubsub):
    flaky_pubsub([grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])

    with pytest.raises(TaskPublishError, match="unconfirmed"):
        enqueue_many(tasks.add, [((n, 0), {}) for n in range(3)])

    assert set(TaskExecution.objects.values_list("status", "status_detail")) == {
        (State.READY, PUBLISH_UNCONFIRMED)}


# -- behaviour 4: arguments JSON cannot carry are refused before anything happens -----------

BAD_ARGUMENTS = [
    pytest.param((math.nan,), {}, "NaN or Infinity", id="nan"),
    pytest.param((math.inf,), {}, "NaN or Infinity", id="infinity"),
    pytest.param((), {"x": -math.inf}, "NaN or Infinity", id="minus-infinity"),
    pytest.param(("a\x00b",), {}, "NUL character at args[0]", id="nul"),
    pytest.param((), {"x": ["ok", "\ud800"]},
                 "unpaired UTF-16 surrogate (not Unicode text) at kwargs.x[1]",
                 id="lone-surrogate"),
    pytest.param((), {"bad\x00key": 1}, "NUL character or an unpaired surrogate", id="key"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "kwargs", "why"), BAD_ARGUMENTS)
def test_arguments_json_cannot_carry_are_refused_before_publishing_or_recording(
        fake_publisher, args, kwargs, why):
    with pytest.raises(InvalidTaskArguments, match=re.escape(why)) as raised:
        tasks.echo.enqueue(*args, **kwargs)

    assert "was not enqueued" in str(raised.value)
    assert str(raised.value).endswith("Pass finite numbers, and text without NUL characters "
                                      "or unpaired surrogates.")
    assert fake_publisher.published == []
    assert not TaskExecution.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "kwargs", "why"), BAD_ARGUMENTS[:1] + BAD_ARGUMENTS[3:5])
def test_one_bad_call_in_enqueue_many_records_and_publishes_none(fake_publisher, args,
                                                                 kwargs, why):
    calls = [((1,), {}), (args, kwargs), ((2,), {})]

    with pytest.raises(InvalidTaskArguments, match=re.escape(why)):
        enqueue_many(tasks.echo, calls)

    assert fake_publisher.published == []
    assert not TaskExecution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_bad_arguments_inside_a_publish_on_commit_transaction_are_refused_at_once(
        backend_options, publisher_slot):
    backend_options(publish_on_commit=True)
    publisher_slot(publisher := FakePublisher())

    with transaction.atomic():
        tasks.echo.enqueue(1)
        with pytest.raises(InvalidTaskArguments):
            tasks.echo.enqueue(math.nan)

    assert [message["args"] for _topic, message, _attrs in publisher.published] == [[1]]
    assert TaskExecution.objects.count() == 1
