"""The push path under races and partial failures (issue 9, item 1).

Each test names the defect it guards against; each failed on the code before its fix. Run
them on PostgreSQL too (GYRINX_TEST_DB=postgres): the uncommitted-enqueue and NUL cases are
PostgreSQL's behaviour.
"""

import threading
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.tasks.signals import task_finished
from django.utils import timezone

from gyrinx_tasks import claim, record
from gyrinx_tasks.messages import RECORDED_ATTRIBUTE
from gyrinx_tasks.models import KillSwitch, State, TaskExecution
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from tests import tasks
from tests.helpers import WAIT, Calls, envelope, in_thread

pytestmark = pytest.mark.usefixtures("no_oidc")

URL = "/tasks/pubsub/"


@pytest.fixture(autouse=True)
def forget_unrecorded():
    record.clear()
    yield
    record.clear()


def push(client, body: bytes):
    return client.post(URL, body, content_type="application/json")


def echo_message(task_id: str, args=("hi",), enqueued_at=None) -> dict:
    return {"task_id": task_id, "task_name": "echo", "args": list(args), "kwargs": {},
            "enqueued_at": (enqueued_at or timezone.now()).isoformat()}


@pytest.fixture
def held_calls(monkeypatch):
    def make(**options) -> Calls:
        replacement = Calls(**options)
        monkeypatch.setattr(tasks, "CALLS", replacement)
        return replacement

    return make


# Lost update: a task that outlives its ack deadline is started again by a second delivery;
# when the slower first attempt finishes, its write must not wipe the newer attempt's record.
@pytest.mark.django_db(transaction=True)
def test_a_slow_attempt_does_not_overwrite_the_attempt_that_superseded_it(held_calls):
    held = held_calls(hold_first=True)
    first = parse_envelope(envelope(echo_message("t-lost"), message_id="m-lost"))
    second = parse_envelope(envelope(echo_message("t-lost"), message_id="m-lost",
                                     delivery_attempt=2))
    thread, results = in_thread(handle_delivery, first, "raw")
    assert held.running.wait(WAIT)
    # The ack deadline (300 s) passes: Pub/Sub redelivers and the run is started again.
    TaskExecution.objects.filter(result_id="t-lost").update(
        last_attempted_at=timezone.now() - timedelta(seconds=301))

    newer = handle_delivery(second, "raw")
    held.release.set()
    thread.join(WAIT)

    assert newer.kind == "ran"
    [older] = results
    assert older.kind == "superseded"
    run = TaskExecution.objects.get(result_id="t-lost")
    assert (run.status, run.attempts) == (State.SUCCESSFUL, 2)
    assert run.return_value == {"args": ["hi"], "kwargs": {}}
    notes = [entry.get("note", "") for entry in run.timeline]
    # Both attempts stay in the record: the first presumed lost, then its late outcome.
    assert any("attempt 1 recorded no outcome" in note for note in notes)
    assert any(note.startswith("attempt 1 succeeded after it was superseded") for note in notes)
    changes = [(e["from"], e["to"]) for e in run.timeline if e["from"] != e["to"]]
    assert changes == [("", State.READY), (State.READY, State.RUNNING),
                       (State.RUNNING, State.SUCCESSFUL)]


@pytest.mark.django_db(transaction=True)
def test_a_superseded_attempt_answers_without_acknowledging(client, held_calls):
    held = held_calls(hold_first=True)
    body = envelope(echo_message("t-sup"), message_id="m-sup")
    thread, results = in_thread(lambda: push(client.__class__(), body))
    assert held.running.wait(WAIT)
    TaskExecution.objects.filter(result_id="t-sup").update(
        last_attempted_at=timezone.now() - timedelta(seconds=301))
    assert push(client, body).status_code == 200
    held.release.set()
    thread.join(WAIT)

    [response] = results
    assert response.status_code == 409
    assert response.json()["outcome"] == "superseded"
    # Pub/Sub redelivers it, and the redelivery is settled by the run's state.
    again = push(client, body)
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    assert len(held) == 2


# Database failure after the task ran: the answer and the record must say what happened, and
# a redelivery must not run the task again on the instance that knows its outcome.
@pytest.mark.django_db(transaction=True)
def test_a_database_failure_after_the_task_ran_is_said_and_recorded_late(client, held_calls):
    ran = threading.Event()
    held = held_calls(on_call=lambda item: ran.set())

    def refuse_after_the_run(execute, sql, params, many, context):
        if ran.is_set():
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    body = envelope(echo_message("t-db"), message_id="m-db")
    with connection.execute_wrapper(refuse_after_the_run):
        response = push(client, body)

    assert response.status_code == 429
    assert response.json()["outcome"] == "unrecorded"
    assert "The task ran and succeeded" in response.json()["detail"]
    run = TaskExecution.objects.get(result_id="t-db")
    assert run.status == State.RUNNING  # what the database holds: the outcome was refused

    again = push(client, body)  # Pub/Sub redelivers, to this instance

    assert (again.status_code, again.json()["outcome"]) == (200, "ran")
    run.refresh_from_db()
    assert (run.status, run.attempts) == (State.SUCCESSFUL, 1)
    assert len(held) == 1  # the task ran once
    assert any("recorded late" in entry.get("note", "") for entry in run.timeline)


@pytest.mark.django_db(transaction=True)
def test_elsewhere_a_run_whose_outcome_was_lost_runs_again_and_says_so(client, held_calls):
    ran = threading.Event()
    held = held_calls(on_call=lambda item: ran.set())

    def refuse_after_the_run(execute, sql, params, many, context):
        if ran.is_set():
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    body = envelope(echo_message("t-db2"), message_id="m-db2")
    with connection.execute_wrapper(refuse_after_the_run):
        assert push(client, body).status_code == 429
    record.clear()  # the redelivery reaches another instance
    assert push(client, body).json()["outcome"] == "busy"  # within the ack deadline
    TaskExecution.objects.filter(result_id="t-db2").update(
        last_attempted_at=timezone.now() - timedelta(seconds=301))

    assert push(client, body).status_code == 200

    run = TaskExecution.objects.get(result_id="t-db2")
    assert (run.status, run.attempts) == (State.SUCCESSFUL, 2)
    assert len(held) == 2  # at-least-once, and the record shows why
    assert any("attempt 1 recorded no outcome" in e.get("note", "") for e in run.timeline)


# Recording must never touch the caller's transaction: a run that cannot be stored (a NUL in
# its arguments, which PostgreSQL refuses) once rolled back the caller's own writes.
@pytest.mark.django_db(transaction=True)
def test_recording_an_immediate_run_never_rolls_back_the_callers_writes():
    with transaction.atomic():
        KillSwitch.objects.create(task_name="callers-own-write")
        result = tasks.immediate_add.enqueue("a\x00", "b")
        KillSwitch.objects.create(task_name="written-after-the-enqueue")

    assert result.return_value == "a\x00b"
    assert set(KillSwitch.objects.values_list("task_name", flat=True)) == {
        "callers-own-write", "written-after-the-enqueue"}
    recorded = TaskExecution.objects.filter(result_id=result.id).exists()
    # PostgreSQL cannot store the NUL, so there the run is not recorded (and logged).
    assert recorded is (connection.vendor != "postgresql")


@pytest.mark.django_db(transaction=True)
def test_a_refused_recording_on_any_database_leaves_the_callers_transaction_alone():
    from django.db import DataError

    def refuse_run_inserts(execute, sql, params, many, context):
        if sql.startswith("INSERT") and "gyrinx_tasks_taskexecution" in sql:
            raise DataError("refused")
        return execute(sql, params, many, context)

    with transaction.atomic():
        KillSwitch.objects.create(task_name="callers-own-write")
        with connection.execute_wrapper(refuse_run_inserts):
            assert tasks.immediate_add.enqueue(1, 2).return_value == 3
        KillSwitch.objects.create(task_name="written-after-the-enqueue")

    assert KillSwitch.objects.count() == 2


# Uncommitted enqueue: a push for a run another transaction is still inserting answers "busy"
# (never waits for that transaction), and never runs an enqueue that then rolls back.
def _open_enqueue(result_id: str, opened: threading.Event, finish: threading.Event,
                  commit: bool) -> str:
    class RollBack(Exception):
        pass

    try:
        with transaction.atomic():
            TaskExecution.objects.create(result_id=result_id, task_id=result_id,
                                         task_name="echo", task_path="tests.tasks.echo",
                                         args=["hi"])
            opened.set()
            finished_in_time = finish.wait(WAIT)
            if not commit:
                raise RollBack
        return f"committed (released by the test: {finished_in_time})"
    except RollBack:
        return "rolled back"


def _busy_outcome() -> str:
    # PostgreSQL answers from the lock timeout; SQLite's single writer times out as a whole.
    return "busy" if connection.vendor == "postgresql" else "database_unavailable"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("recorded", [True, False], ids=["our-backend", "other-producer"])
def test_a_push_for_an_uncommitted_enqueue_is_busy_and_then_runs(client, held_calls, recorded):
    held = held_calls()
    opened, finish = threading.Event(), threading.Event()
    thread, results = in_thread(_open_enqueue, "t-open", opened, finish, True)
    assert opened.wait(WAIT)
    attributes = {RECORDED_ATTRIBUTE: "1"} if recorded else {}
    body = envelope(echo_message("t-open"), message_id="m-open", attributes=attributes)

    response = push(client, body)
    enqueue_still_open = not finish.is_set()
    finish.set()
    thread.join(WAIT)

    assert enqueue_still_open  # answered without waiting for the enqueue's transaction
    assert (response.status_code, response.json()["outcome"]) == (429, _busy_outcome())
    assert results == ["committed (released by the test: True)"]
    assert held == []
    assert push(client, body).status_code == 200
    assert TaskExecution.objects.get(result_id="t-open").status == State.SUCCESSFUL


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_enqueue_is_never_run(client, held_calls):
    held = held_calls()
    opened, finish = threading.Event(), threading.Event()
    thread, results = in_thread(_open_enqueue, "t-undone", opened, finish, False)
    assert opened.wait(WAIT)
    published = timezone.now()
    attributes = {RECORDED_ATTRIBUTE: "1"}
    body = envelope(echo_message("t-undone", enqueued_at=published), message_id="m-undone",
                    attributes=attributes)

    first = push(client, body)
    enqueue_still_open = not finish.is_set()
    finish.set()
    thread.join(WAIT)
    after_rollback = push(client, body)

    assert enqueue_still_open
    assert results == ["rolled back"]
    assert first.json()["outcome"] == _busy_outcome()
    # The row may still be committing elsewhere, so it is waited for within the grace...
    assert (after_rollback.status_code, after_rollback.json()["outcome"]) == (429, "busy")
    # ...and past it the message is acknowledged and recorded as rejected, never run.
    late = envelope(echo_message("t-undone", enqueued_at=published - claim.UNCOMMITTED_GRACE),
                    message_id="m-undone", attributes=attributes)
    response = push(client, late)
    assert (response.status_code, response.json()["outcome"]) == (200, "rejected")
    assert held == []
    run = TaskExecution.objects.get(message_id="m-undone")
    assert run.status == State.REJECTED
    assert run.result_id != "t-undone"  # the id stays free, should that enqueue commit yet
    assert "rolled back" in run.status_detail


# Kill switch on a stuck run: a run left RUNNING by a worker that died, then switched off.
@pytest.mark.django_db
def test_switching_off_a_task_whose_run_is_stuck_running_skips_it(client, held_calls):
    held = held_calls()
    run = TaskExecution.objects.create(result_id="t-stuck", task_id="t-stuck",
                                       task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    run.start("dead-worker")
    run.save()
    TaskExecution.objects.filter(pk=run.pk).update(
        last_attempted_at=timezone.now() - timedelta(seconds=301))
    KillSwitch.objects.create(task_name="echo", enabled=False, reason="incident")

    response = push(client, envelope(echo_message("t-stuck")))

    assert (response.status_code, response.json()["outcome"]) == (200, "skipped")
    run.refresh_from_db()
    assert run.status == State.SKIPPED
    assert [e["exception_class_path"] for e in run.errors] == ["builtins.TimeoutError"]
    assert held == []


# Django's contract: the runner catches BaseException as ImmediateBackend does, so a task
# raising SystemExit is recorded FAILED and task_finished is sent (not left RUNNING).
@pytest.mark.django_db
def test_a_task_raising_system_exit_is_recorded_failed(client, held_calls):
    def leave(item):
        raise SystemExit(3)

    held_calls(on_call=leave)
    finished = []

    def on_finished(sender, task_result, **kwargs):
        finished.append(task_result.status)

    task_finished.connect(on_finished)
    try:
        response = push(client, envelope(echo_message("t-exit")))
    finally:
        task_finished.disconnect(on_finished)

    assert (response.status_code, response.json()["outcome"]) == (500, "failed")
    run = TaskExecution.objects.get(result_id="t-exit")
    assert run.status == State.FAILED
    assert run.errors[0]["exception_class_path"] == "builtins.SystemExit"
    # A failed attempt that Pub/Sub retries does not end the run: no task_finished (issue 16;
    # this asserted ["FAILED"] before).
    assert finished == []


@pytest.mark.django_db
def test_the_runner_follows_the_routers_write_database(client, settings, held_calls, monkeypatch):
    held = held_calls()
    settings.DATABASE_ROUTERS = ["tests.helpers.RunsReadFromAReplica"]
    opened = []
    atomic = transaction.atomic

    def spy(using=None, savepoint=True, durable=False):
        opened.append(using)
        return atomic(using=using, savepoint=savepoint, durable=durable)

    # The router writes to "default", which is also atomic()'s default: only the alias each
    # transaction is opened with shows whether the router was asked.
    monkeypatch.setattr(claim.transaction, "atomic", spy)
    response = push(client, envelope(echo_message("t-routed")))
    rejected = push(client, envelope({"task_id": "t-bad", "task_name": "nope"}))

    assert (response.status_code, response.json()["outcome"]) == (200, "ran")
    assert rejected.json()["outcome"] == "rejected"
    assert len(held) == 1
    assert opened and set(opened) == {"default"}


# Malformed but plausible: an impossible date is a rejection (2xx), not a 500 loop. Helper F
# fixed the parser; this pins it.
@pytest.mark.django_db
def test_an_impossible_enqueued_at_is_rejected_and_acknowledged(client):
    message = echo_message("t-date")
    message["enqueued_at"] = "2026-02-30T10:00:00+00:00"

    response = push(client, envelope(message))

    assert (response.status_code, response.json()["outcome"]) == (200, "rejected")
    assert "enqueued_at" in TaskExecution.objects.get().status_detail


@pytest.mark.django_db(transaction=True)
def test_an_enqueue_rolled_back_after_publishing_never_runs(client, held_calls, fake_publisher):
    # The real sequence: enqueue() inside the caller's transaction inserts the row and
    # publishes at once; Pub/Sub delivers; then the caller's transaction rolls back.
    held = held_calls()
    delivered = []

    class RollBack(Exception):
        pass

    with pytest.raises(RollBack), transaction.atomic():
        result = tasks.echo.enqueue("hi")
        [(_topic, payload, attributes)] = fake_publisher.published
        assert attributes == {RECORDED_ATTRIBUTE: "1"}
        body = envelope(payload, message_id="m-real", attributes=attributes)
        thread, answers = in_thread(lambda: push(client.__class__(), body))
        thread.join(WAIT)
        delivered.extend(answers)
        raise RollBack

    late = dict(payload, enqueued_at=(timezone.now() - claim.UNCOMMITTED_GRACE).isoformat())
    settled = push(client, envelope(late, message_id="m-real", attributes=attributes))

    [during] = delivered
    assert (during.status_code, during.json()["outcome"]) == (429, _busy_outcome())
    assert (settled.status_code, settled.json()["outcome"]) == (200, "rejected")
    assert not TaskExecution.objects.filter(result_id=result.id).exists()
    assert held == []


# Unbounded rows, the write side: each attempt writes the run's state, not its arguments
# (which can be megabytes), however many times Pub/Sub redelivers it.
@pytest.mark.django_db
def test_attempts_never_rewrite_the_runs_arguments(client):
    from django.db import connection as default_connection
    from django.test.utils import CaptureQueriesContext

    run = TaskExecution.objects.create(result_id="t-big", task_id="t-big", task_name="explode",
                                       task_path="tests.tasks.explode", args=["x" * 100_000])
    body = envelope({"task_id": "t-big", "task_name": "explode", "args": ["x" * 100_000],
                     "kwargs": {}}, message_id="m-big")

    with CaptureQueriesContext(default_connection) as queries:
        assert push(client, body).status_code == 500
        assert push(client, body).status_code == 500

    updates = [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 4  # start and outcome, twice
    assert not any('"args" =' in sql or '"kwargs" =' in sql for sql in updates)
    run.refresh_from_db()
    assert (run.status, run.attempts, run.message_id) == (State.FAILED, 2, "m-big")
