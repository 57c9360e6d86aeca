"""The enqueue paths: one call (one write, one request), publish_on_commit batches, and
enqueue_many. Publish failures must surface and mark exactly the runs that failed."""

import json
import threading
import time
from concurrent.futures import Future

import pytest
from django.core import checks
from django.db import OperationalError, connection, transaction
from django.tasks import TaskResultStatus, task_backends
from django.test.utils import CaptureQueriesContext
from google.api_core.exceptions import PermissionDenied

from gyrinx_tasks import backend as backend_module
from gyrinx_tasks import clients
from gyrinx_tasks.backend import PubSubBackend, enqueue_many
from gyrinx_tasks.exceptions import TaskPublishError
from gyrinx_tasks.messages import MessageTooLarge
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.registry import get_route
from tests import tasks
from tests.helpers import FakePublisher, envelope, use_publisher


class PickyPublisher(FakePublisher):
    """Fails the publish of every message whose first argument is in ``refuse``."""

    def __init__(self, refuse: set[int]) -> None:
        super().__init__()
        self.refuse = refuse

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future:
        if json.loads(data)["args"][:1] and json.loads(data)["args"][0] in self.refuse:
            future: Future = Future()
            future.set_exception(PermissionDenied("not allowed to publish this one"))
            return future
        return super().publish(topic, data, **attrs)


def published_args(publisher: FakePublisher) -> list:
    return sorted(message["args"][0] for _topic, message, _attrs in publisher.published)


def writes(queries) -> list[str]:
    return [q["sql"].split()[0] for q in queries
            if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE")]


# -- one call ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_single_enqueue_writes_once_and_leaves_the_message_id_to_the_delivery(fake_publisher):
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.enqueue(1, 2)

    assert writes(queries.captured_queries) == ["INSERT"]
    execution = TaskExecution.objects.get(result_id=result.id)
    assert (execution.status, execution.message_id) == (State.READY, None)
    assert len(fake_publisher.published) == 1


@pytest.mark.django_db
def test_single_enqueue_publish_failure_still_raises_and_fails_the_run(fake_publisher):
    fake_publisher.error = PermissionDenied("not allowed")

    with pytest.raises(TaskPublishError, match="recorded as FAILED"):
        tasks.add.enqueue(1, 2)

    [execution] = TaskExecution.objects.all()
    assert execution.status == State.FAILED
    assert execution.errors[-1]["exception_class_path"].endswith("PermissionDenied")


@pytest.mark.django_db
def test_single_enqueue_sends_the_publish_before_inserting_and_waits_after(monkeypatch):
    # The two round trips overlap: the request is on its way while the row is inserted, and
    # the call returns only once the publish is confirmed and the row exists.
    order = []

    class Recording(FakePublisher):
        def publish(self, topic, data, **attrs):
            order.append("publish sent")
            future = super().publish(topic, data, **attrs)
            original = future.result

            def result(timeout=None):
                order.append("publish awaited")
                return original(timeout=timeout)

            future.result = result
            return future

    real_insert = backend_module.insert_run

    def insert(using, execution, *args):
        order.append("row inserted")
        real_insert(using, execution, *args)

    use_publisher(Recording())
    monkeypatch.setattr(backend_module, "insert_run", insert)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        task_backends["default"].__dict__.pop("publisher", None)

    assert order == ["publish sent", "row inserted", "publish awaited"]
    assert TaskExecution.objects.get(result_id=result.id).status == State.READY


@pytest.mark.django_db(transaction=True)
def test_single_enqueue_whose_insert_fails_raises_and_its_message_never_runs(
        fake_publisher, monkeypatch, client, settings):
    def insert_fails(using, execution, *args):
        raise OperationalError("the database went away")

    monkeypatch.setattr(backend_module, "insert_run", insert_fails)
    with pytest.raises(OperationalError):
        tasks.add.enqueue(1, 2)

    # The message was already sent. Its delivery finds no row: busy, nothing run or recorded.
    [(_topic, message, attributes)] = fake_publisher.published
    assert attributes["gyrinx_recorded"] == "1"
    monkeypatch.undo()
    settings.TASKS_VERIFY_OIDC = False
    response = client.post("/tasks/pubsub/", envelope(message, attributes=attributes),
                           content_type="application/json")
    assert (response.status_code, response.json()["outcome"]) == (429, "busy")
    assert not TaskExecution.objects.exists()


def test_every_backend_instance_shares_one_publisher_per_settings(monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # built, never called
    seen = []

    def build():
        # Django makes a backend per thread; each must get the same client.
        seen.append(PubSubBackend("x", {"OPTIONS": {"project_id": "p"}}).publisher)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other = PubSubBackend("y", {"OPTIONS": {
        "client_options": {"api_endpoint": "127.0.0.1:2"}}}).publisher

    assert len({id(client) for client in seen}) == 1
    assert other is not seen[0]


def test_batch_settings_are_deprecated_with_a_check_warning_naming_the_fix(settings):
    # batch_settings configured the client library's batching publish(), which nothing calls;
    # a project that still sets it is warned, not refused (it is no longer E012's typo).
    settings.TASKS = {**settings.TASKS, "default": {**settings.TASKS["default"], "OPTIONS": {
        "project_id": "p", "batch_settings": {"max_latency": 0, "max_messages": 500}}}}

    messages = task_backends["default"].check()

    assert [(m.id, m.level) for m in messages] == [("gyrinx_tasks.W016", checks.WARNING)]
    assert "'batch_settings'] is deprecated and has no effect" in messages[0].msg
    assert messages[0].hint == "Remove 'batch_settings' from the backend's OPTIONS."


# -- publish_on_commit ---------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_transaction_publishes_all_its_runs_together_on_commit(on_commit_backend):
    with transaction.atomic():
        results = [tasks.add.enqueue(n, 0) for n in range(5)]
        assert on_commit_backend.published == []

    assert published_args(on_commit_backend) == [0, 1, 2, 3, 4]
    assert {r.status for r in results} == {TaskResultStatus.READY}


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_publishes_nothing_even_later(on_commit_backend):
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 0)
        raise RuntimeError("roll back")
    assert on_commit_backend.published == []

    # The next transaction must not carry the rolled-back run along.
    with transaction.atomic():
        tasks.add.enqueue(2, 0)

    assert published_args(on_commit_backend) == [2]
    assert TaskExecution.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_savepoint_drops_only_its_runs(on_commit_backend):
    with transaction.atomic():
        tasks.add.enqueue(1, 0)
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.enqueue(2, 0)
            raise RuntimeError("roll back the savepoint")
        tasks.add.enqueue(3, 0)

    assert published_args(on_commit_backend) == [1, 3]


@pytest.mark.django_db(transaction=True)
def test_all_enqueues_in_a_rolled_back_savepoint_publish_nothing(on_commit_backend):
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.enqueue(1, 0)
            raise RuntimeError("roll back the savepoint")
        TaskExecution.objects.count()  # the outer transaction goes on and commits

    assert on_commit_backend.published == []
    with transaction.atomic():
        tasks.add.enqueue(2, 0)
    assert published_args(on_commit_backend) == [2]


@pytest.mark.django_db(transaction=True)
def test_a_failed_publish_on_commit_logs_and_marks_exactly_those_runs(on_commit_backend,
                                                                     caplog):
    picky = PickyPublisher(refuse={2, 4})
    use_publisher(picky)

    with transaction.atomic():  # committed: its caller sees no error (issue 16, behaviour 3)
        results = {n: tasks.add.enqueue(n, 0) for n in range(6)}

    failed = set(TaskExecution.objects.filter(status=State.FAILED)
                 .values_list("result_id", flat=True))
    assert failed == {results[2].id, results[4].id}
    assert TaskExecution.objects.filter(status=State.READY).count() == 4
    assert published_args(picky) == [0, 1, 3, 5]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    summary = [text for text in logged if "2 run(s)" in text]
    assert len(summary) == 1
    assert results[2].id in summary[0] and results[4].id in summary[0]
    assert results[2].status == TaskResultStatus.FAILED
    assert results[0].status == TaskResultStatus.READY


@pytest.mark.django_db(transaction=True)
def test_a_failed_publish_on_commit_never_stops_later_on_commit_callbacks(on_commit_backend):
    """Issue 16, behaviour 3: the order confirmation registered after the enqueue still goes
    out, and the block that committed does not raise."""
    use_publisher(FakePublisher(error=PermissionDenied("not allowed to publish")))
    sent = []

    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        transaction.on_commit(lambda: sent.append("order confirmation"))

    assert sent == ["order confirmation"]
    assert TaskExecution.objects.get(result_id=result.id).status == State.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_failed_publish_on_commit_never_turns_a_committed_request_into_a_500(
        on_commit_backend, client, settings):
    """Issue 16, behaviour 3, through a request: a view that enqueues in ATOMIC_REQUESTS."""
    use_publisher(FakePublisher(error=PermissionDenied("not allowed to publish")))
    settings.ROOT_URLCONF = "tests.urls_enqueue"
    settings.DATABASES["default"]["ATOMIC_REQUESTS"] = True
    try:
        response = client.post("/order/", {"x": 1, "y": 2})
    finally:
        settings.DATABASES["default"]["ATOMIC_REQUESTS"] = False

    assert response.status_code == 200
    run = TaskExecution.objects.get(result_id=response.content.decode())
    assert run.status == State.FAILED
    assert response.wsgi_request.confirmation_sent  # the callback after the enqueue ran


# -- enqueue_many --------------------------------------------------------------------------

@pytest.mark.django_db
def test_enqueue_many_records_and_publishes_every_call(fake_publisher):
    calls = [((n,), {"y": 1}) for n in range(2500)]  # more than two chunks

    with CaptureQueriesContext(connection) as queries:
        results = enqueue_many(tasks.add, calls)

    assert len(results) == 2500
    assert TaskExecution.objects.filter(status=State.READY).count() == 2500
    assert published_args(fake_publisher) == list(range(2500))
    # PostgreSQL: one COPY (not seen by CaptureQueriesContext); elsewhere bulk_create,
    # 1,000 rows a statement. Either way no UPDATE follows.
    expected = [] if connection.vendor == "postgresql" else ["INSERT"] * 3
    assert writes(queries.captured_queries) == expected
    [(_topic, message, _attrs)] = fake_publisher.published[:1]
    assert message["task_id"] == results[0].id and message["kwargs"] == {"y": 1}


@pytest.mark.django_db
def test_enqueue_many_rows_hold_what_a_single_enqueue_writes(fake_publisher):
    single = TaskExecution.objects.get(result_id=tasks.add.enqueue(7, y=8).id)
    many = enqueue_many(tasks.add, [((7,), {"y": 8}), ((9,), {"y": 1})])

    rows = list(TaskExecution.objects.filter(result_id__in=[r.id for r in many]))
    assert len(rows) == 2
    skip = {"id", "result_id", "task_id", "args", "kwargs", "created_at", "enqueued_at",
            "timeline"}
    for row in rows:
        for field in TaskExecution._meta.concrete_fields:
            if field.attname not in skip:
                assert getattr(row, field.attname) == getattr(single, field.attname), field
        assert row.task_id == row.result_id
        assert row.created_at and row.enqueued_at
        assert [(e["from"], e["to"], e["note"]) for e in row.timeline] == [
            ("", State.READY, "enqueued")]
    assert sorted((r.args, r.kwargs) for r in rows) == [([7], {"y": 8}), ([9], {"y": 1})]


@pytest.mark.django_db
def test_enqueue_many_partial_failure_marks_exactly_the_failed_runs(fake_publisher):
    picky = PickyPublisher(refuse={3, 1500})
    use_publisher(picky)

    with pytest.raises(TaskPublishError, match=r"2 run\(s\).*recorded as FAILED"):
        enqueue_many(tasks.add, [((n, 0), {}) for n in range(2000)])

    failed = TaskExecution.objects.filter(status=State.FAILED)
    assert sorted(e.args[0] for e in failed) == [3, 1500]
    assert TaskExecution.objects.filter(status=State.READY).count() == 1998
    assert len(picky.published) == 1998


@pytest.mark.django_db
def test_enqueue_many_refuses_an_oversized_message_before_recording_any(fake_publisher):
    calls = [((1, 2), {}), (("x" * 11_000_000, 2), {})]

    with pytest.raises(MessageTooLarge):
        enqueue_many(tasks.add, calls)

    assert TaskExecution.objects.count() == 0
    assert fake_publisher.published == []


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_in_a_rolled_back_transaction_publishes_nothing(on_commit_backend):
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue_many(tasks.add, [((n, 0), {}) for n in range(10)])
        raise RuntimeError("roll back")

    assert on_commit_backend.published == []
    assert TaskExecution.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_on_commit_publishes_with_the_transaction(on_commit_backend):
    with transaction.atomic():
        enqueue_many(tasks.add, [((n, 0), {}) for n in range(10)])
        tasks.add.enqueue(10, 0)
        assert on_commit_backend.published == []

    assert published_args(on_commit_backend) == list(range(11))


@pytest.mark.django_db
def test_enqueue_many_on_another_backend_enqueues_one_by_one():
    results = enqueue_many(tasks.add.using(backend="immediate"), [((1, 2), {}), ((3, 4), {})])

    assert [r.return_value for r in results] == [3, 7]


# -- against the real emulator -------------------------------------------------------------

@pytest.fixture
def pull_topic(pubsub_emulator):
    """The add task's topic with a pull subscription on the emulator; yields a pull()."""
    route = get_route("add")
    backend = task_backends["default"]
    backend.__dict__.pop("publisher", None)  # the shared client for the emulator's host
    topic = backend.topic_path(route.topic_name)
    subscription = pubsub_emulator.subscription_path(f"pull-{time.monotonic_ns()}")
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)

    def pull(expected: int) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=1000, timeout=10)
            got += [json.loads(m.message.data) for m in response.received_messages]
            if response.received_messages:
                subscriber.acknowledge(subscription=subscription,
                                       ack_ids=[m.ack_id for m in response.received_messages])
        return got

    yield pull
    subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
    publisher.stop()
    backend.__dict__.pop("publisher", None)


@pytest.mark.django_db
def test_emulator_single_and_bulk_enqueues_arrive(pull_topic):
    one = tasks.add.enqueue(1, 2)
    # More than one Publish request (1,000 messages each), and one message near 1 MB.
    many = enqueue_many(tasks.add, [((n, 0), {}) for n in range(1500)]
                        + [(("x" * 900_000, 0), {})])

    got = pull_topic(1502)
    assert sorted(m["task_id"] for m in got) == sorted([one.id] + [r.id for r in many])
    assert TaskExecution.objects.filter(status=State.READY).count() == 1502
    assert len(got) == 1502  # each exactly once


def test_publish_many_splits_requests_by_count_and_size(pubsub_emulator, monkeypatch):
    client = clients.publisher_client()
    sizes = []
    real = clients._request

    def spy(topic, messages):
        sizes.append((len(messages), sum(len(data) for data, _ in messages)))
        return real(topic, messages)

    monkeypatch.setattr(clients, "_request", spy)
    topic = pubsub_emulator.topic_path(f"split-{time.monotonic_ns()}")
    client.create_topic(name=topic)
    try:
        big = [(b"x" * 4_000_000, {})] * 3  # 12 MB: over one request's 10 MB limit
        ids = clients.publish_many(client, topic, [(b"{}", {})] * 2001 + big, 30)
    finally:
        client.delete_topic(topic=topic)
        client.stop()

    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 2004
    assert [count for count, _ in sizes] == [1000, 1000, 3, 1]
    assert max(size for _, size in sizes) <= clients.MAX_REQUEST_BYTES


@pytest.mark.django_db
def test_emulator_publish_to_a_missing_topic_fails_the_run(pubsub_emulator):
    backend = task_backends["default"]
    backend.__dict__.pop("publisher", None)
    try:
        # No topic exists for echo: the single request fails at once (NotFound, not retried).
        with pytest.raises(TaskPublishError, match="recorded as FAILED"):
            tasks.echo.enqueue(1)
        with pytest.raises(TaskPublishError, match=r"3 run\(s\)"):
            enqueue_many(tasks.echo, [((n,), {}) for n in range(3)])
    finally:
        backend.__dict__.pop("publisher", None)

    errors = [e.errors[-1]["exception_class_path"] for e in TaskExecution.objects.all()]
    assert errors == ["google.api_core.exceptions.NotFound"] * 4
    assert set(TaskExecution.objects.values_list("status", flat=True)) == {State.FAILED}


def test_a_transient_failure_of_a_started_publish_is_sent_again():
    """clients._send: a started call that fails transiently is resent, not re-read."""
    import time
    from types import SimpleNamespace

    import grpc

    from gyrinx_tasks import clients

    class Unavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "try again"

        def initial_metadata(self):
            return None

        def trailing_metadata(self):
            return None

        def is_active(self):
            return False

        def time_remaining(self):
            return None

        def cancel(self):
            return False

        def add_callback(self, callback):
            return False

    class FailedOnce:
        reads = 0

        def result(self):
            FailedOnce.reads += 1
            raise Unavailable()

    sent = []

    def publish(request, timeout=None, metadata=None):
        sent.append(request)
        return SimpleNamespace(message_ids=["m-9"])

    client = SimpleNamespace(transport=SimpleNamespace(publish=publish))
    ids = clients._send(client, "projects/p/topics/t", "request", time.monotonic() + 5,
                        first=FailedOnce())

    assert ids == ["m-9"]
    assert FailedOnce.reads == 1 and sent == ["request"]


# --- A delivery that arrives before the publish is confirmed ---


# Change caught: the enqueue's message-id update without its `message_id IS NULL` guard,
# which overwrites the id a delivery already recorded.
@pytest.mark.django_db
def test_publish_does_not_overwrite_a_message_id_recorded_by_the_delivery(fake_publisher):
    original = fake_publisher.publish

    class DeliveredFirst:
        def __init__(self, future):
            self.future = future

        def result(self, timeout=None):
            # The push arrives (and records its message id) before the publish is confirmed.
            TaskExecution.objects.filter(message_id__isnull=True).update(message_id="from-push")
            return self.future.result(timeout=timeout)

    def publish_delivered_first(topic, data, **attrs):
        return DeliveredFirst(original(topic, data, **attrs))

    fake_publisher.publish = publish_delivered_first
    result = tasks.add.enqueue(1, 2)

    assert TaskExecution.objects.get(result_id=result.id).message_id == "from-push"
