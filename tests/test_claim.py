"""Claiming a delivery's run (gyrinx_tasks/claim.py, runner.py): which run a delivery is for,
the run made from a message no run was recorded for, and what is decided for it - run it, or
answer duplicate, busy or rejected - on the unlocked path or under the row lock.

Tests marked "Change caught" fail under a small code change that once left the whole suite
green (scripts/mutation_check.py applies them); the others were written from mutmut's
survivors and name the mutants they kill (docs/testing.md, "Mutation testing"). Races between
real threads: tests/test_races.py.
"""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import (
    IntegrityError,
    OperationalError,
    connection,
    transaction,
)
from django.utils import timezone

from gyrinx_tasks import claim
from gyrinx_tasks.messages import RECORDED_ATTRIBUTE
from gyrinx_tasks.models import (
    KillSwitch,
    State,
    TaskExecution,
    TaskExecutionQuerySet,
    Trigger,
)
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from gyrinx_tasks.views import ACK
from gyrinx_tasks.workers import current_worker_id
from tests.helpers import (
    change_after_first_read,
    envelope,
    note_elsewhere,
    package_log_lines,
    push,
    task_message,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_oidc", "calls", "fresh_unrecorded"),
]
ENQUEUED = "2026-11-23T10:00:00+00:00"


# Change caught: only SUCCESSFUL counts as settled, so skipped or rejected runs are run again
# when Pub/Sub redelivers them.
@pytest.mark.django_db
def test_redelivery_of_a_skipped_run_does_not_run_it(client, calls):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False)
    body = envelope(task_message("t-echo", enqueued_at=ENQUEUED))
    assert push(client, body).status_code == 200
    switch.enabled = True
    switch.save()

    again = push(client, body)

    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert calls == []
    assert TaskExecution.objects.get().status == State.SKIPPED


@pytest.mark.django_db
def test_redelivery_of_a_rejected_run_does_not_run_it(client, calls):
    # Arguments that do not fit echo's signature are impossible here (it takes *args), so the
    # rejection is of `add` with a missing argument; then the same message id arrives again.
    body = envelope({"task_id": "t-add", "task_name": "add", "args": [1], "kwargs": {}})
    assert push(client, body).status_code == 200

    again = push(client, body)

    assert again.status_code == 200
    execution = TaskExecution.objects.get()
    assert execution.status == State.REJECTED
    assert execution.attempts == 0


# Change caught: record_rejection no longer finds the earlier record of a redelivered
# malformed message (it would add a row or fail on the unique message id).
@pytest.mark.django_db
def test_redelivered_malformed_message_is_recorded_once(client):
    body = envelope({"task_id": "t-x", "task_name": "no_such_task", "args": [], "kwargs": {}},
                    message_id="m-bad")
    first, second = push(client, body), push(client, body)

    assert (first.status_code, second.status_code) == (200, 200)
    execution = TaskExecution.objects.get()
    assert execution.message_id == "m-bad"
    assert [step["to"] for step in execution.timeline].count(State.REJECTED) == 1


# Change caught: the claim without its row lock, or outside a transaction. A second
# transaction holds the run's row locked while it settles it; the delivery must not run the
# task on a stale read. On PostgreSQL the claim locks with NOWAIT and answers busy at once
# (Pub/Sub redelivers); SQLite serialises the transactions, so the delivery waits and then
# sees the settled run. The redelivery, after the other transaction, settles as a duplicate.
@pytest.mark.django_db(transaction=True)
def test_delivery_waits_for_a_run_locked_by_another_transaction(calls):
    execution = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                             args=["hi"])
    delivery = parse_envelope(envelope(task_message(execution.result_id, enqueued_at=ENQUEUED)))
    locked, outcomes = threading.Event(), []

    def settle_elsewhere():
        try:
            with transaction.atomic():
                row = TaskExecution.objects.select_for_update().get(pk=execution.pk)
                row.status = State.SUCCESSFUL
                row.save(update_fields=["status"])
                locked.set()
                time.sleep(1.0)  # the delivery arrives while this transaction is open
        finally:
            connection.close()

    def deliver():
        try:
            outcomes.append(handle_delivery(delivery, "raw"))
        finally:
            connection.close()

    holder = threading.Thread(target=settle_elsewhere)
    holder.start()
    assert locked.wait(10)
    worker = threading.Thread(target=deliver)
    worker.start()
    holder.join(20)
    worker.join(20)

    first = "busy" if connection.vendor == "postgresql" else "duplicate"
    assert [outcome.kind for outcome in outcomes] == [first]
    assert handle_delivery(delivery, "raw").kind == "duplicate"
    assert calls == []


# Change caught: the unlocked claim's compare-and-set without the status (or the timeline). A
# writer changes the run between the delivery's read and its write; the write must not
# happen, and the delivery decides again under the row lock.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("meanwhile", ["settled elsewhere", "noted elsewhere"])
def test_a_run_changed_between_read_and_write_is_decided_again_under_the_lock(
        calls, monkeypatch, meanwhile):

    execution = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                             args=["hi"])
    delivery = parse_envelope(envelope(task_message(execution.result_id, enqueued_at=ENQUEUED)))

    def settle(row):
        row.status = State.SUCCESSFUL
        row.save(update_fields=["status"])  # status only, timeline untouched

    reads = change_after_first_read(monkeypatch, settle if meanwhile == "settled elsewhere"
                                    else note_elsewhere)
    outcome = handle_delivery(delivery, "raw")

    stored = TaskExecution.objects.get(pk=execution.pk)
    if meanwhile == "settled elsewhere":
        assert outcome.kind == "duplicate"
        assert calls == []
        assert stored.status == State.SUCCESSFUL
    else:
        assert outcome.kind == "ran"
        assert [note.get("note") for note in stored.timeline].count(
            "written by another attempt") == 1  # the note survived the delivery's writes
        assert stored.status == State.SUCCESSFUL and stored.attempts == 1
    assert len(reads) == 2  # the unlocked read, then the locked one


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _claim mutants 20, 22, 23, 27, 30, 36, 44, 50, 53, _trigger mutant 14: a delivery of a run
# our backend did not record first (another publisher's message) makes the run from the
# message: its task, path, arguments, the message's enqueued_at, the task id as result id, an
# enqueue (not scheduler) trigger, and a first READY entry saying which message delivered it.
def test_a_run_not_recorded_before_is_made_from_its_message(client, calls):
    response = push(client, envelope(task_message(task_id="t-made", args=(1, 2), kwargs={"k": "v"},
                                             enqueued_at=ENQUEUED), message_id="m-made"))

    assert response.status_code == 200, response.content
    run = TaskExecution.objects.get()
    assert (run.task_name, run.task_path, run.result_id, run.message_id, run.trigger) == (
        "echo", "tests.tasks.echo", "t-made", "m-made", Trigger.ENQUEUE)
    assert (run.args, run.kwargs) == ([1, 2], {"k": "v"})
    assert run.enqueued_at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert (run.timeline[0]["to"], run.timeline[0]["note"]) == (
        State.READY, "delivered as message m-made")
    assert calls == [((1, 2), {"k": "v"})]


# _claim mutants 20, 30: a message without enqueued_at is enqueued when it is delivered.
def test_a_run_made_from_a_message_without_enqueued_at_is_enqueued_now(client):
    before = timezone.now()
    assert push(client, envelope(task_message())).status_code == 200
    run = TaskExecution.objects.get()
    assert run.enqueued_at is not None and before <= run.enqueued_at <= timezone.now()


# _claim mutants 37, 38, 42, 43, 45, 46, 47: "Run now" from the admin says who asked, in the
# run's first timeline entry (cut to the 150 characters of a username).
def test_a_run_now_delivery_says_who_asked_for_it(client):
    name = "a" * 149 + "bc"
    assert push(client, envelope(task_message(), message_id="m-now",
                                 attributes={"requested_by": name})).status_code == 200
    run = TaskExecution.objects.get()
    assert run.timeline[0]["note"] == f"delivered as message m-now; run now by {name[:150]}"


# _claim mutants 33, 34: a task id of up to 64 characters is the run's result id (Django's
# get_result() finds it); a longer one cannot be, and the run gets one of its own.
@pytest.mark.parametrize("length, kept", [(64, True), (65, False)])
def test_a_task_id_is_the_result_id_up_to_64_characters(client, length, kept):
    task_id = "t" * length
    assert push(client, envelope(task_message(task_id=task_id))).status_code == 200
    run = TaskExecution.objects.get()
    assert run.task_id == task_id
    assert (run.result_id == task_id) is kept


# _claim mutants 60, 61: a run recorded before its publish has no message id; a delivery that
# raced the unlocked path and was decided under the lock still records the message's id.
def test_a_delivery_decided_under_the_lock_records_its_message_id(calls, monkeypatch):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(task_message(task_id=run.result_id), message_id="m-late"))
    reads = change_after_first_read(monkeypatch, note_elsewhere)

    outcome = handle_delivery(delivery, "raw")

    assert len(reads) == 2 and outcome.kind == "ran"
    assert TaskExecution.objects.get(pk=run.pk).message_id == "m-late"


# record_rejection mutants 1, 77, 78, 79: a delivery for a task no longer routed (removed in
# a deploy) settles the run its task id names, rather than leaving it READY beside a new row.
def test_a_delivery_for_an_unknown_task_rejects_the_run_it_names(client):
    run = TaskExecution.objects.create(task_name="gone", task_path="tests.tasks.gone")

    response = push(client, envelope(task_message(task_id=run.result_id, task_name="gone")))

    assert response.status_code == ACK and response.json()["outcome"] == "rejected"
    stored = TaskExecution.objects.get()
    assert (stored.pk, stored.status) == (run.pk, State.REJECTED)
    assert "gone" in stored.status_detail


# record_rejection mutants 90, 91, 93, 94: a rejected delivery with no run to settle is a new
# run carrying the message's task id, task name and trigger (a scheduler firing stays one).
def test_a_rejected_scheduled_delivery_is_a_scheduled_run_of_its_task(client):
    body = envelope(task_message(task_id="scheduled-gone", task_name="gone"), message_id="m-sched")

    assert push(client, body).json()["outcome"] == "rejected"

    run = TaskExecution.objects.get()
    assert (run.task_id, run.task_name, run.message_id, run.trigger) == (
        "scheduled-gone", "gone", "m-sched", Trigger.SCHEDULE)


# record_rejection mutants 3, 13-24, 27, 29-38: a message that is not a valid task message
# still names its task: the rejected run keeps the task id and name it carried (cut to the
# columns' 255 characters).
def test_a_malformed_task_message_keeps_the_task_it_names(client):
    body = envelope({"task_id": "t-bad", "task_name": "echo", "args": "not a list"})
    assert push(client, body).json()["outcome"] == "rejected"
    run = TaskExecution.objects.get()
    assert (run.task_id, run.task_name, run.status) == ("t-bad", "echo", State.REJECTED)


# record_rejection mutants 23, 37: one that names no task keeps empty names, not made-up ones.
def test_a_malformed_task_message_without_names_keeps_them_empty(client):
    assert push(client, envelope({"args": []})).json()["outcome"] == "rejected"
    run = TaskExecution.objects.get()
    assert (run.task_id, run.task_name, run.status) == ("", "", State.REJECTED)


def test_a_malformed_task_message_with_overlong_names_keeps_them_cut(client):
    body = envelope({"task_id": "i" * 300, "task_name": "n" * 300, "args": []})
    assert push(client, body).json()["outcome"] == "rejected"
    run = TaskExecution.objects.get()
    assert (run.task_id, run.task_name) == ("i" * 254 + "…", "n" * 254 + "…")


# record_rejection mutants 56, 61, 62, 64, 65: the log line of a rejection names the message
# (or "?" when it has no id) and the reason.
def test_a_rejection_is_logged_with_its_message_id_and_reason(client, caplog):
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        push(client, envelope(task_message(task_name="gone"), message_id="m-log"))
        push(client, b'{"message": {}}')
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Rejected")]
    assert lines[0].startswith("Rejected Pub/Sub delivery m-log: ") and "gone" in lines[0]
    assert lines[1].startswith("Rejected Pub/Sub delivery ?: The message has no 'messageId'")


# _settle_or_start mutant 18: a first delivery whose arguments do not fit its task is
# rejected under the lock, keeping the raw message like every rejection.
def test_a_first_delivery_with_arguments_that_do_not_fit_keeps_its_raw_message(client):
    body = envelope(task_message(task_name="add", args=["only one"]), message_id="m-args")
    response = push(client, body)
    assert response.json()["outcome"] == "rejected"
    run = TaskExecution.objects.get()
    assert run.status == State.REJECTED and "do not fit" in run.status_detail
    assert run.raw_message == body.decode()


# _uncommitted mutants 7, 10, 25, 28: the answers say why: a recorded run not visible yet is
# "not committed yet" (retry), one still invisible an hour on was rolled back (rejected).
def test_a_recorded_run_not_visible_is_busy_then_rejected_with_a_reason(client, calls):
    now = timezone.now()
    recent = task_message(task_id="t-open", enqueued_at=now.isoformat())
    old = task_message(task_id="t-gone", enqueued_at=(now - timedelta(hours=2)).isoformat())

    busy = push(client, envelope(recent, attributes={RECORDED_ATTRIBUTE: "1"}))
    gone = push(client, envelope(old, message_id="m-2", attributes={RECORDED_ATTRIBUTE: "1"}))

    assert (busy.status_code, busy.json()["outcome"]) == (429, "busy")
    assert "not committed yet" in busy.json()["detail"]
    assert (gone.json()["outcome"], gone.status_code) == ("rejected", ACK)
    assert "rolled back" in gone.json()["detail"] and "t-gone" in gone.json()["detail"]
    assert calls == []


# _uncommitted mutants 34, 38, 39, revised for issue 16 (behaviour 6): a run whose row the
# reads cannot see, past the grace, is tested by inserting a row of its id. A row of that id
# that is there after all (its transaction was only slow) refuses the insert, so the delivery
# answers busy and the run stays free to run; it was rejected in a row of its own before.
def test_a_run_not_seen_past_the_grace_but_committed_is_not_rejected(client, monkeypatch):
    slow = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo")
    monkeypatch.setattr(claim, "select_run", lambda *args, **kwargs: None)
    old = task_message(task_id=slow.result_id,
                  enqueued_at=(timezone.now() - timedelta(hours=2)).isoformat())

    response = push(client, envelope(old, attributes={RECORDED_ATTRIBUTE: "1"}))

    assert (response.status_code, response.json()["outcome"]) == (429, "busy")
    assert TaskExecution.objects.get(pk=slow.pk).status == State.READY
    assert TaskExecution.objects.count() == 1


# _decide mutants 2, 3, 6, 45-80: the answers of a delivery that does not run say what
# the run is: a settled run's duplicate, a run still running elsewhere, a rejection (also
# logged with the message id).
def test_answers_without_a_run_name_the_run_and_why(client, caplog):
    done = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                        status=State.SUCCESSFUL)
    running = TaskExecution.objects.create(
        task_name="echo", task_path="tests.tasks.echo", status=State.RUNNING, attempts=1,
        last_attempted_at=timezone.now())
    waiting = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add")

    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        answers = [push(client, envelope(body, message_id=f"m-{n}")).json() for n, body in
                   enumerate([task_message(task_id=done.result_id),
                              task_message(task_id=running.result_id),
                              task_message(task_id=waiting.result_id, task_name="add")])]

    assert answers[0] == {"outcome": "duplicate", "detail": "Run already SUCCESSFUL.",
                          "result_id": done.result_id, "status": "SUCCESSFUL"}
    assert answers[1] == {"outcome": "busy",
                          "detail": "This run is still running on another worker.",
                          "result_id": running.result_id, "status": "RUNNING"}
    assert answers[2]["outcome"] == "rejected" and answers[2]["status"] == "REJECTED"
    assert answers[2]["detail"].startswith("The arguments do not fit tests.tasks.add: ")
    assert package_log_lines(caplog) == [f"Rejected Pub/Sub delivery m-2: {answers[2]['detail']}"]
    rejected = TaskExecution.objects.get(pk=waiting.pk)
    assert rejected.status_detail == answers[2]["detail"]
    assert rejected.raw_message.startswith('{"message": ') and '"m-2"' in rejected.raw_message


# _decide mutants 194, 195: an attempt records the worker that runs it and Pub/Sub's
# delivery attempt.
def test_an_attempt_records_its_worker_and_delivery_attempt(client):
    assert push(client, envelope(task_message(), delivery_attempt=3)).status_code == 200
    run = TaskExecution.objects.get()
    assert (run.worker_ids, run.delivery_attempt) == ([current_worker_id()], 3)


class LockNotAvailable(Exception):
    """What psycopg raises when PostgreSQL's lock_timeout expires (SQLSTATE 55P03)."""

    sqlstate = "55P03"


def lock_timeout() -> OperationalError:
    error = OperationalError("canceling statement due to lock timeout")
    error.__cause__ = LockNotAvailable()  # as Django wraps the driver's error
    return error


# handle_delivery mutants 56-79, _lock_not_available mutants 1, 6, 7, 9, 10: the first
# delivery's insert losing to another transaction's insert of the same run (IntegrityError),
# or waiting past PostgreSQL's lock timeout for it, answers busy, so Pub/Sub retries; any
# other database error while claiming is the database being unavailable.
@pytest.mark.parametrize("error, outcome, detail", [
    (IntegrityError("UNIQUE constraint failed"), "busy",
     "This run is being recorded elsewhere; retry later."),
    (lock_timeout(), "busy",
     "Another transaction holds this run (an enqueue not committed yet, or a duplicate "
     "delivery); retry later."),
    (OperationalError("database is locked"), "database_unavailable",
     "The database is unavailable; retry later."),
])
def test_a_claim_the_database_refuses_is_retried(client, monkeypatch, calls, error, outcome,
                                                 detail):
    def refuse(self, execution):
        raise error

    monkeypatch.setattr(TaskExecutionQuerySet, "create_run", refuse)
    response = push(client, envelope(task_message()))
    assert (response.status_code, response.json()) == (429, {"outcome": outcome,
                                                             "detail": detail})
    assert calls == [] and not TaskExecution.objects.exists()


class RunsToDefaultOnly:
    """Runs are written to "default"; anything else the router is asked about goes to an
    alias that does not exist."""

    def db_for_write(self, model, **hints):
        return "default" if model is TaskExecution else "nowhere"


# _db mutant 1: the runner asks the routers where runs (TaskExecution) are written.
def test_the_runner_asks_the_routers_about_runs(client, settings):
    settings.DATABASE_ROUTERS = [f"{__name__}.RunsToDefaultOnly"]
    assert push(client, envelope(task_message())).json()["outcome"] == "ran"
