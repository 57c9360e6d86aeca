"""Runs enqueued in a transaction with publish_on_commit are held on the connection and
written together (statements.buffer_shared, flush_buffer): before the connection's next
statement, through an execute wrapper, and before its COMMIT, through its wrapped _commit.
Each test first checks that rows were held where it matters (``held_rows``), then that the
transaction behaves as if each enqueue() had inserted its row at once: reads in the
transaction see the runs, a rolled-back savepoint or transaction takes exactly its runs with
it (recorded nowhere, published never, not written by the next transaction), a failed write
rolls back with a clear error and publishes nothing, and the counts hold for 2,000 runs.
The last test fails loudly if the Django internals this relies on move.

Run on SQLite and on PostgreSQL (GYRINX_TEST_DB=postgres).
"""

import inspect
import uuid
from contextlib import nullcontext
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.tasks import task_backends
from django.test.utils import CaptureQueriesContext

from gyrinx_tasks import backend as backend_module
from gyrinx_tasks import statements
from gyrinx_tasks.models import TaskExecution
from tests import tasks
from tests.helpers import FakePublisher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def publisher(on_commit_backend):
    """The default backend with publish_on_commit (tests/conftest.py), its FakePublisher,
    after one warm-up enqueue (the first run of a kind on a connection takes the general
    path)."""
    with transaction.atomic():
        tasks.add.enqueue(0, 0)
    on_commit_backend.published.clear()
    return on_commit_backend


def published(fake: FakePublisher) -> list[str]:
    return [message["task_id"] for _, message, _ in fake.published]


def recorded(*results: Any) -> set[str]:
    return set(TaskExecution.objects.filter(result_id__in=[r.id for r in results])
               .values_list("result_id", flat=True))


def held() -> int:
    return statements.held_rows(connections["default"])


def test_reads_in_the_transaction_see_the_runs_held(publisher):
    table = connection.ops.quote_name(TaskExecution._meta.db_table)
    with transaction.atomic():
        first = tasks.add.enqueue(1, 1)
        second = tasks.add.enqueue(2, 2)
        assert held() == 2
        assert task_backends["default"].get_result(first.id).args == [1, 1]
        assert held() == 0
        third = tasks.add.enqueue(3, 3)
        assert held() == 1
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT result_id FROM {table} WHERE result_id IN (%s, %s, %s)",
                           [first.id, second.id, third.id])
            assert {row[0] for row in cursor.fetchall()} == {first.id, second.id, third.id}
        assert held() == 0
        assert statements._flush_first not in connection.execute_wrappers
    assert published(publisher) == [first.id, second.id, third.id]


def test_a_rolled_back_savepoint_after_enqueues_keeps_the_runs_before_it(publisher):
    with transaction.atomic():
        before = [tasks.add.enqueue(n, 0) for n in range(3)]
        assert held() == 3  # written by the SAVEPOINT statement, before it
        with pytest.raises(RuntimeError), transaction.atomic():
            inside = tasks.add.enqueue(9, 9)
            assert held() == 1  # dropped by the ROLLBACK TO SAVEPOINT
            raise RuntimeError("roll back the savepoint")
        assert held() == 0
        after = tasks.add.enqueue(4, 0)

    assert recorded(*before, inside, after) == {r.id for r in [*before, after]}
    assert published(publisher) == [r.id for r in [*before, after]]


def test_a_run_enqueued_in_a_rolled_back_savepoint_is_neither_recorded_nor_published(
        publisher):
    with transaction.atomic():
        kept = tasks.add.enqueue(1, 0)
        with transaction.atomic():  # released: its run is kept
            released = tasks.add.enqueue(2, 0)
            assert held() == 1
        with transaction.atomic():  # rolled back without an exception
            dropped = tasks.add.enqueue(3, 0)
            assert held() == 1
            transaction.set_rollback(True)
        assert held() == 0

    assert recorded(kept, released, dropped) == {kept.id, released.id}
    assert published(publisher) == [kept.id, released.id]


def test_a_savepoint_a_failed_statement_aborted_rolls_back_alone_with_rows_held(publisher):
    """A statement that bypasses Django's cursor fails inside a savepoint with rows held (on
    PostgreSQL the transaction is then aborted until the ROLLBACK TO): the rows held are
    dropped, not written, before the ROLLBACK TO, so the savepoint alone is rolled back."""
    with transaction.atomic():
        before = tasks.add.enqueue(1, 0)
        with pytest.raises(Exception), transaction.atomic():  # noqa: B017, PT011
            dropped = tasks.add.enqueue(2, 0)
            assert held() == 1
            raw = connections["default"].connection.cursor()
            raw.execute("SELECT 1/0")  # PostgreSQL: division by zero; SQLite: NULL
            raise RuntimeError("roll back the savepoint")
        assert held() == 0
        after = tasks.add.enqueue(3, 0)

    assert recorded(before, dropped, after) == {before.id, after.id}
    assert published(publisher) == [before.id, after.id]


def test_a_get_or_create_that_fails_in_its_savepoint_after_enqueues_keeps_the_runs(publisher):
    existing = TaskExecution.objects.get(task_name="add")  # the warm-up run
    with transaction.atomic():
        runs = [tasks.add.enqueue(n, 1) for n in range(3)]
        assert held() == 3
        # Not found by its lookup, then refused by the result id's unique constraint inside
        # get_or_create's own savepoint, which is rolled back.
        with pytest.raises(IntegrityError):
            TaskExecution.objects.get_or_create(
                result_id=existing.result_id, task_name="not-add")
        later = tasks.add.enqueue(7, 1)

    assert recorded(*runs, later) == {r.id for r in [*runs, later]}
    assert published(publisher) == [r.id for r in [*runs, later]]


@pytest.mark.parametrize("how", ["exception", "set_rollback"])
def test_a_rolled_back_transaction_records_publishes_and_carries_over_nothing(
        publisher, how):
    rolled_back = []
    with pytest.raises(RuntimeError) if how == "exception" else nullcontext():
        with transaction.atomic():
            rolled_back += [tasks.add.enqueue(n, 2) for n in range(3)]
            assert held() == 3
            if how == "exception":
                raise RuntimeError("roll back")
            transaction.set_rollback(True)
    assert held() == 0
    assert statements._flush_first not in connection.execute_wrappers
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        committed = tasks.add.enqueue(5, 5)

    assert recorded(*rolled_back, committed) == {committed.id}
    assert TaskExecution.objects.count() == 2  # the warm-up run and this one
    assert published(publisher) == [committed.id]
    assert not any(r.id in q["sql"] for q in queries.captured_queries for r in rolled_back)


def test_a_closed_connection_drops_the_rows_it_held(publisher):
    with transaction.atomic():
        gone = tasks.add.enqueue(1, 0)
        assert held() == 1
        connection.close()  # in the block: Django rolls back when the block ends
        assert held() == 0
    with transaction.atomic():
        committed = tasks.add.enqueue(2, 0)

    assert recorded(gone, committed) == {committed.id}
    assert published(publisher) == [committed.id]


def test_rows_held_for_a_driver_connection_that_was_replaced_are_never_written(publisher):
    """Belt and braces beside close(): the rows belong to the driver connection they were
    held on, and are dropped, not written, if the wrapper now has another. (Only the rows:
    a connection really replaced was closed first, and close() drops Django's commit hooks.)"""
    with transaction.atomic():
        gone = tasks.add.enqueue(1, 0)
        connections["default"].__dict__[statements.BUFFER].raw = object()  # not this one
        assert not TaskExecution.objects.filter(result_id=gone.id).exists()
        assert held() == 0
        gone_too = tasks.add.enqueue(2, 0)
        connections["default"].__dict__[statements.BUFFER].raw = object()
        later = tasks.add.enqueue(3, 0)  # held anew, for this driver connection
        assert held() == 1
        assert TaskExecution.objects.filter(result_id=later.id).exists()

    assert recorded(gone, gone_too, later) == {later.id}


@pytest.fixture
def taken_id(publisher, monkeypatch):
    """Make the next run's result id one that is already recorded (the warm-up run's), so
    that writing the held row fails on the unique constraint."""
    existing = TaskExecution.objects.get(task_name="add").result_id
    ids = iter([uuid.UUID(existing)])
    real = uuid.uuid4
    monkeypatch.setattr(backend_module.uuid, "uuid4", lambda: next(ids, None) or real())
    return existing


def test_a_write_that_fails_at_commit_rolls_back_and_publishes_nothing(publisher, taken_id):
    callbacks = []
    with pytest.raises(IntegrityError) as raised, transaction.atomic():
        clash = tasks.add.enqueue(2, 0)
        fine = tasks.add.enqueue(1, 0)
        assert clash.id == taken_id and held() == 2
        transaction.on_commit(lambda: callbacks.append("order confirmation"))

    assert any("publish_on_commit" in note and "rolled back" in note
               for note in getattr(raised.value, "__notes__", []))
    assert recorded(fine) == set()
    assert TaskExecution.objects.count() == 1
    assert published(publisher) == [] and callbacks == []
    assert held() == 0 and not connection.in_atomic_block
    with transaction.atomic():  # the connection goes on
        after = tasks.add.enqueue(3, 0)
    assert published(publisher) == [after.id]


def test_a_write_that_fails_before_a_statement_raises_there_and_marks_the_rollback(
        publisher, taken_id):
    with transaction.atomic():
        tasks.add.enqueue(2, 0)  # the taken id
        fine = tasks.add.enqueue(1, 0)
        with pytest.raises(IntegrityError) as raised:
            TaskExecution.objects.filter(task_name="other").exists()
        assert transaction.get_rollback()

    assert any("publish_on_commit" in note for note in raised.value.__notes__)
    assert recorded(fine) == set()
    assert published(publisher) == []


def test_a_write_that_fails_at_a_savepoints_release_rolls_it_back_and_marks_the_outer_block(
        publisher, monkeypatch):
    taken = uuid.UUID(TaskExecution.objects.get(task_name="add").result_id)
    ids = iter([uuid.uuid4(), taken])  # the second run's id is taken
    real = uuid.uuid4
    monkeypatch.setattr(backend_module.uuid, "uuid4", lambda: next(ids, None) or real())
    with transaction.atomic():
        before = tasks.add.enqueue(1, 0)  # written by the inner block's SAVEPOINT
        with pytest.raises(IntegrityError), transaction.atomic():
            tasks.add.enqueue(2, 0)  # the taken id, written by the RELEASE
            inner = tasks.add.enqueue(3, 0)
            assert held() == 2
        assert transaction.get_rollback()

    assert recorded(before, inner) == set()
    assert published(publisher) == []


def test_a_held_row_keeps_the_arguments_as_they_were_at_enqueue(publisher):
    arguments = {"items": [1]}
    with transaction.atomic():
        run = tasks.add.enqueue(arguments, 0)
        assert held() == 1
        arguments["items"].append(2)  # the caller's own object, changed after enqueue()

    assert TaskExecution.objects.get(result_id=run.id).args == [{"items": [1]}, 0]
    [(_topic, message, _attributes)] = publisher.published
    assert message["args"] == [{"items": [1]}, 0]


def test_two_thousand_enqueues_record_and_publish_two_thousand_runs(publisher):
    with transaction.atomic():
        results = [tasks.add.enqueue(n, n) for n in range(2000)]
        assert held() == 2000
    # Written by the COMMIT, not by a later statement.
    assert held() == 0 and statements._flush_first not in connection.execute_wrappers

    runs = dict(TaskExecution.objects.filter(result_id__in=[r.id for r in results])
                .values_list("result_id", "args"))
    assert runs == {r.id: [n, n] for n, r in enumerate(results)}
    assert published(publisher) == [r.id for r in results]
    assert TaskExecution.objects.count() == 2001


def test_an_execute_wrapper_of_the_caller_is_left_as_it_was(publisher):
    seen = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql.split()[0].upper())
        return execute(sql, params, many, context)

    with transaction.atomic():
        with connection.execute_wrapper(watch):
            run = tasks.add.enqueue(1, 0)
            assert held() == 1
        # execute_wrapper() pops the last wrapper on its way out: its own, not ours.
        assert connection.execute_wrappers == [statements._flush_first]
        assert TaskExecution.objects.filter(result_id=run.id).exists()
    assert connection.execute_wrappers == [] and seen == []
    assert published(publisher) == [run.id]


@pytest.mark.django_db(transaction=False)
def test_commit_hooks_run_inside_a_test_transaction_write_the_rows_first(
        publisher, django_capture_on_commit_callbacks):
    found = []
    real = publisher.publish

    def publish(topic: str, data: bytes, **attrs: str) -> Any:
        found.append(held())  # no statement here: a read would write them itself
        return real(topic, data, **attrs)

    publisher.publish = publish  # type: ignore[method-assign]
    with django_capture_on_commit_callbacks(execute=True):
        run = tasks.add.enqueue(4, 4)
        assert held() == 1
    # (The hook publishes every run pending on the connection: the warm-up's too.)
    assert found and not any(found)
    assert TaskExecution.objects.filter(result_id=run.id).exists()
    assert published(publisher)[-1] == run.id


def test_the_django_internals_the_batch_relies_on_are_where_they_were(publisher):
    """Django has no hook before COMMIT: the batch wraps the connection's _commit and
    _rollback (private), and writes before each statement through execute_wrappers (public).
    If this fails, Django moved them: the held rows would be published uncommitted, or
    written into the next transaction. See docs/performance.md, "Private internals"."""
    commit = inspect.getsource(BaseDatabaseWrapper.commit)
    rollback = inspect.getsource(BaseDatabaseWrapper.rollback)
    assert "self._commit()" in commit, "BaseDatabaseWrapper.commit no longer calls _commit"
    assert "self._rollback()" in rollback, (
        "BaseDatabaseWrapper.rollback no longer calls _rollback")
    assert "self._close()" in inspect.getsource(BaseDatabaseWrapper.close), (
        "BaseDatabaseWrapper.close no longer calls _close")
    for name in ("_savepoint", "_savepoint_rollback", "_savepoint_commit"):
        source = inspect.getsource(getattr(type(connections["default"]), name))
        assert "cursor.execute(" in source, (
            f"{name} no longer runs its statement through a cursor (and its wrappers)")
    assert "execute_wrappers" in inspect.getsource(CursorWrapper._execute_with_wrappers)

    # And on this connection: the commit writes what is held, before the COMMIT.
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        run = tasks.add.enqueue(8, 8)
        assert held() == 1
        assert connections["default"].__dict__.get(statements.HOOKED)
    assert held() == 0 and statements._flush_first not in connection.execute_wrappers
    sql = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    writes = [n for n, s in enumerate(sql) if s in ("COPY", "INSERT") or s[0].isdigit()]
    assert writes and "COMMIT" in sql and writes[-1] < sql.index("COMMIT"), sql
    assert recorded(run) == {run.id} and held() == 0
    assert published(publisher) == [run.id]

    # A ROLLBACK drops what is held.
    with transaction.atomic():
        tasks.add.enqueue(9, 9)
        assert held() == 1
        transaction.set_rollback(True)
    assert held() == 0 and connections["default"].__dict__.get(statements.BUFFER) is None


def test_a_failure_that_is_not_a_database_error_still_rolls_back(publisher, monkeypatch):
    def broken(connection: Any, plan: tuple, rows: list) -> None:
        raise TypeError("cannot adapt")

    monkeypatch.setattr(statements, "_write", broken)
    with pytest.raises(DatabaseError, match="TypeError: cannot adapt"), transaction.atomic():
        run = tasks.add.enqueue(1, 0)
    assert recorded(run) == set()
    assert published(publisher) == []
    assert not connection.in_atomic_block and connection.get_autocommit()
