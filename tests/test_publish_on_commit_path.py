"""enqueue() inside a transaction with publish_on_commit writes each run from its column
values (backend._enqueue_on_commit, statements.insert_shared): no model instance, a
TaskResult made from the values, the arguments' JSON encoded once, and commit hooks held
weakly instead of a query for the rows that committed. Each test checks that this path was
taken, then that it keeps what the general path guarantees: the same row and message, the
savepoint and rollback rules of on_commit(), failed publishes recorded, bad arguments refused
before anything is written, and model signals sent.

Run on SQLite and on PostgreSQL (GYRINX_TEST_DB=postgres).
"""

import gc
import math
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.tasks import TaskResultStatus, task_backends
from django.test.utils import CaptureQueriesContext
from google.api_core.exceptions import PermissionDenied, ServiceUnavailable

from gyrinx_tasks import backend as backend_module
from gyrinx_tasks import statements
from gyrinx_tasks.exceptions import InvalidTaskArguments
from gyrinx_tasks.messages import build_message, encode_json, encode_message, encode_task_message
from gyrinx_tasks.models import PUBLISH_UNCONFIRMED, State, TaskExecution
from tests import tasks
from tests.helpers import FakePublisher, use_publisher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def publisher(on_commit_backend):
    """The default backend with publish_on_commit (tests/conftest.py), its FakePublisher."""
    return on_commit_backend


@pytest.fixture
def written(monkeypatch):
    """The result ids of the runs held by buffer_shared (and written with the others before
    the connection's next statement or its COMMIT), after one warm-up enqueue (the first run
    of a kind on a connection takes the general path and leaves the statement)."""
    with transaction.atomic():
        tasks.add.enqueue(0, 0)
    ids: list[str] = []
    real = backend_module.buffer_shared

    def spy(connection: Any, shared: Any, values: dict, encoded: Any = None) -> bool:
        done = real(connection, shared, values, encoded)
        if done:
            ids.append(values["result_id"])
        return done

    monkeypatch.setattr(backend_module, "buffer_shared", spy)
    return ids


def columns(run: TaskExecution) -> dict:
    return {field.attname: getattr(run, field.attname)
            for field in TaskExecution._meta.concrete_fields}


def test_a_run_written_from_its_values_is_the_row_and_result_of_the_general_path(
        publisher, written):
    with transaction.atomic():
        general = backend_module._backend("default")._prepare(
            tasks.add, backend_module.get_route("add"), [3, {"deep": [1.5, None]}], {},
            backend_module.timezone.now(), None).execution
        result = tasks.add.enqueue(3, {"deep": [1.5, None]})
    assert written == [result.id]

    row = columns(TaskExecution.objects.get(result_id=result.id))
    for name, value in columns(general).items():
        if name not in ("id", "result_id", "task_id", "created_at", "enqueued_at", "timeline"):
            assert row[name] == value, name
    assert row["result_id"] == row["task_id"] == result.id
    assert row["created_at"] == row["enqueued_at"] == result.enqueued_at
    assert [(e["from"], e["to"], e["note"]) for e in row["timeline"]] == [
        ("", "READY", "enqueued")]
    # The TaskResult is the one get_result() makes from the row.
    fetched = task_backends["default"].get_result(result.id)
    for attr in ("id", "status", "args", "kwargs", "enqueued_at", "started_at", "finished_at",
                 "last_attempted_at", "backend", "errors", "worker_ids", "attempts"):
        assert getattr(result, attr) == getattr(fetched, attr), attr
    assert result.task.queue_name == fetched.task.queue_name
    # The message is the general path's encoding of the same run.
    [(_topic, message, attributes)] = publisher.published[1:]
    assert message == {"task_id": result.id, "task_name": "add",
                       "args": [3, {"deep": [1.5, None]}], "kwargs": {},
                       "enqueued_at": result.enqueued_at.isoformat()}
    assert attributes["gyrinx_recorded"] == "1"


@pytest.mark.parametrize("args, kwargs", [
    ([1, 2], {}), (["é", "\u2028", "tab\t"], {"k": [None, True, 1.5]}), ([], {"a": {"b": []}}),
])
def test_the_message_encoded_from_the_arguments_json_is_the_general_encoding(args, kwargs):
    now = backend_module.timezone.now()
    assert encode_task_message("id-1", "add", encode_json(args), encode_json(kwargs), now) == (
        encode_message(build_message("id-1", "add", args, kwargs, now)))


def test_a_transaction_writes_its_runs_in_one_statement_and_reads_nothing_to_publish(
        publisher, written, monkeypatch):
    writes = []
    real = statements._write

    def spy(connection: Any, plan: tuple, rows: list) -> None:
        writes.append(len(rows))
        real(connection, plan, rows)

    monkeypatch.setattr(statements, "_write", spy)
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        results = [tasks.add.enqueue(n, 1) for n in range(5)]

    # One statement for the five runs: COPY on PostgreSQL, an executemany INSERT on SQLite.
    sql = [q["sql"] for q in queries.captured_queries]
    writing = [s for s in sql if s.split()[0].upper() not in ("BEGIN", "COMMIT")]
    assert len(writing) == 1, sql
    assert ("COPY " if connection.vendor == "postgresql" else "INSERT INTO") in writing[0]
    assert writes == [5]
    assert written == [r.id for r in results]
    assert TaskExecution.objects.filter(result_id__in=written).count() == 5
    assert [m["task_id"] for _, m, _ in publisher.published[1:]] == written


def test_a_rolled_back_savepoint_drops_its_runs_hooks_at_once(publisher, written):
    """The flush knows which runs committed because Django drops the commit hooks of a
    rolled-back savepoint and the queue holds them weakly: this fails loudly if a hook
    outlives its savepoint (another Python, or Django keeping a reference)."""
    queue_of = lambda: getattr(connection, backend_module.PENDING_ATTR)  # noqa: E731
    with transaction.atomic():
        kept = tasks.add.enqueue(1, 0)
        with pytest.raises(RuntimeError), transaction.atomic():
            dropped = tasks.add.enqueue(2, 0)
            hook = queue_of()[-1]
            assert hook() is not None
            raise RuntimeError("roll back the savepoint")
        assert hook() is None, "a rolled-back savepoint's commit hook is still alive"
        later = tasks.add.enqueue(3, 0)

    assert written == [kept.id, dropped.id, later.id]
    assert [m["task_id"] for _, m, _ in publisher.published[1:]] == [kept.id, later.id]
    assert not TaskExecution.objects.filter(result_id=dropped.id).exists()
    assert queue_of() == []


def test_a_rolled_back_transaction_leaves_nothing_for_the_next_one_to_publish(
        publisher, written):
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = tasks.add.enqueue(1, 0)
        raise RuntimeError("roll back")
    gc.collect()
    with transaction.atomic():
        committed = tasks.add.enqueue(2, 0)

    assert written == [rolled_back.id, committed.id]
    assert [m["task_id"] for _, m, _ in publisher.published[1:]] == [committed.id]


@pytest.mark.parametrize("error, status, detail", [
    (PermissionDenied("not allowed to publish"), State.FAILED,
     "Publishing to Pub/Sub failed; the task was never delivered."),
    (ServiceUnavailable("answer lost"), State.READY, PUBLISH_UNCONFIRMED),
], ids=["refused", "unconfirmed"])
def test_a_failed_publish_is_recorded_on_a_run_written_from_its_values(
        publisher, written, error, status, detail):
    use_publisher(FakePublisher(error=error))
    sent = []
    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        transaction.on_commit(lambda: sent.append("order confirmation"))

    assert written == [result.id]
    run = TaskExecution.objects.get(result_id=result.id)
    assert (run.status, run.status_detail) == (status, detail)
    assert run.errors[-1]["exception_class_path"].endswith(type(error).__name__)
    assert result.errors and result.status == (
        TaskResultStatus.FAILED if status == State.FAILED else TaskResultStatus.READY)
    assert sent == ["order confirmation"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, "nul \x00", "lone \ud800"],
                         ids=["nan", "infinity", "nul", "surrogate"])
def test_bad_arguments_are_refused_before_anything_is_written(publisher, written, bad):
    with transaction.atomic():
        with pytest.raises(InvalidTaskArguments):
            tasks.add.enqueue(bad, 1)
        assert TaskExecution.objects.count() == 1  # the warm-up run only
    assert written == []
    assert len(publisher.published) == 1


def test_with_a_model_signal_receiver_each_run_is_saved_as_a_model(publisher, written):
    saved = []

    def receiver(sender: Any, instance: TaskExecution, created: bool, **kwargs: Any) -> None:
        saved.append((instance.result_id, created, instance.pk is not None))

    post_save.connect(receiver, sender=TaskExecution, weak=False)
    try:
        with transaction.atomic():
            result = tasks.add.enqueue(1, 2)
    finally:
        post_save.disconnect(receiver, sender=TaskExecution)

    assert written == []
    assert saved == [(result.id, True, True)]
    assert [m["task_id"] for _, m, _ in publisher.published[1:]] == [result.id]


def test_an_insert_that_fails_marks_the_transaction_for_rollback(publisher, written):
    from django.db import IntegrityError, connections

    marked = []
    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        key = ("add", "tests.tasks.add", "default", "default", "enqueue", None)
        now = backend_module.timezone.now()
        values = {"result_id": result.id, "task_id": result.id, "args": [1, 2], "kwargs": {},
                  "created_at": now, "enqueued_at": now, "timeline": []}
        with pytest.raises(IntegrityError), transaction.atomic():
            try:  # the result id is taken
                statements.insert_shared(connections["default"], key, values)
            finally:
                marked.append(transaction.get_rollback())
    assert marked == [True]
    assert written == [result.id]
    assert TaskExecution.objects.filter(result_id=result.id).count() == 1
