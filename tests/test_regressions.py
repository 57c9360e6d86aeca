"""Guards for the push path: each test fails under a specific small change to the code.

Each of these changes once left the whole suite green (issue "The push path is correct under
races and partial failures", item 4). The comment on each test names the change it catches.
"""

import logging
import secrets
import threading
import time

import pytest
from django.db import DatabaseError, connection, transaction
from django.tasks.signals import task_finished

from gyrinx_tasks.models import KillSwitch, State, TaskExecution
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from tests import tasks
from tests.helpers import envelope, push

URL = "/tasks/pubsub/"


@pytest.fixture(autouse=True)
def no_oidc(settings):
    settings.TASKS_VERIFY_OIDC = False


def echo_message(task_id="t-echo", **kwargs):
    return {"task_id": task_id, "task_name": "echo", "args": ["hi"], "kwargs": kwargs,
            "enqueued_at": "2026-11-23T10:00:00+00:00"}


@pytest.fixture
def calls():
    tasks.CALLS.clear()
    yield tasks.CALLS
    tasks.CALLS.clear()


# Change caught: only SUCCESSFUL counts as settled, so skipped or rejected runs are run again
# when Pub/Sub redelivers them.
@pytest.mark.django_db
def test_redelivery_of_a_skipped_run_does_not_run_it(client, calls):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False)
    body = envelope(echo_message())
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
    delivery = parse_envelope(envelope(echo_message(task_id=execution.result_id)))
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


# Change caught: an environment-variable switch set to one of the documented "off" words
# being ignored.
@pytest.mark.django_db
@pytest.mark.parametrize("value", ["off", "OFF", "0", "no", " False "])
def test_every_documented_off_word_turns_the_env_switch_off(client, calls, monkeypatch, value):
    monkeypatch.setenv("ENABLE_ECHO", value)

    response = push(client, envelope(echo_message()))

    assert response.status_code == 200
    assert TaskExecution.objects.get().status == State.SKIPPED
    assert calls == []


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["on", "1", "true", "yes", ""])
def test_other_env_switch_values_leave_the_task_on(client, calls, monkeypatch, value):
    monkeypatch.setenv("ENABLE_ECHO", value)

    assert push(client, envelope(echo_message())).status_code == 200
    assert calls == [(("hi",), {})]


# Was: task_finished sent when the task raises. Issue 16 (Django's contract) changed it: a
# failed attempt that Pub/Sub will retry does not end the run, so no task_finished is sent
# for it; tests/test_signals_contract.py shows it sent once when a run gives up.
@pytest.mark.django_db
def test_task_finished_is_not_sent_for_a_failed_attempt_that_will_retry(client):
    seen = []

    def finished(sender, task_result, **kwargs):
        seen.append((task_result.status, [e.exception_class_path for e in task_result.errors]))

    task_finished.connect(finished)
    try:
        response = push(client, envelope(
            {"task_id": "t-boom", "task_name": "explode", "args": [], "kwargs": {}}))
    finally:
        task_finished.disconnect(finished)

    assert response.status_code == 500
    assert seen == []


# Change caught: the signal receivers' best-effort guard (`_safely`) swallowing nothing, so a
# database error while recording an ImmediateBackend run breaks the caller's enqueue.
@pytest.mark.django_db
def test_a_recording_failure_does_not_break_an_immediate_enqueue(monkeypatch, caplog):
    def refuse(self, *args, **kwargs):
        raise DatabaseError("recording refused")

    monkeypatch.setattr(TaskExecution, "save", refuse)
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        result = tasks.immediate_add.enqueue(2, 3)

    assert result.return_value == 5
    assert "Could not record task run" in caplog.text


# Change caught: a malformed message answered with a non-acknowledging status: a plain 400,
# or a 202, which Pub/Sub documents as an ack but the official emulator redelivers. The
# subscription retries after 1 s, so waiting well past that shows whether the emulator
# delivered the message again.
@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_malformed_message_is_delivered_exactly_once(settings, pubsub_emulator, live_server,
                                                     emulator_push):
    from django.core.signals import request_started

    settings.TASKS_ENVIRONMENT = "reg" + secrets.token_hex(4)
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    subscription = emulator_push("add", f"{live_server.url}{URL}", min_backoff=1,
                                 max_backoff=1)
    pushes = []

    def count(sender, environ=None, **kwargs):
        if environ and environ.get("PATH_INFO") == URL:
            pushes.append(time.monotonic())

    request_started.connect(count)
    try:
        message_id = subscription.publish(b"this is not json")
        deadline = time.monotonic() + 60
        while not pushes:
            assert time.monotonic() < deadline, "the emulator never delivered the message"
            time.sleep(0.1)
        time.sleep(6)  # several retry intervals of the 1 s backoff
    finally:
        request_started.disconnect(count)

    assert len(pushes) == 1
    assert TaskExecution.objects.get(message_id=message_id).status == State.REJECTED


def note_elsewhere(row):
    row.note("written by another attempt")
    row.save(update_fields=["timeline", "timeline_omitted"])


def change_after_first_read(monkeypatch, change):
    """Let ``change(row)`` write to the run just after a delivery first reads it, as another
    writer would between that read and the delivery's write. Returns the reads made."""
    from gyrinx_tasks import claim

    real_select, reads = claim.select_run, []

    def select_then_change(using, column, value, lock, switch_for=None, task_name=None):
        found = real_select(using, column, value, lock, switch_for, task_name)
        if found is not None and not reads:
            change(TaskExecution.objects.get(pk=found.pk))
        reads.append(found)
        return found

    monkeypatch.setattr(claim, "select_run", select_then_change)
    return reads


# Change caught: the unlocked claim's compare-and-set without the status (or the timeline). A
# writer changes the run between the delivery's read and its write; the write must not
# happen, and the delivery decides again under the row lock.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("meanwhile", ["settled elsewhere", "noted elsewhere"])
def test_a_run_changed_between_read_and_write_is_decided_again_under_the_lock(
        calls, monkeypatch, meanwhile):

    execution = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                             args=["hi"])
    delivery = parse_envelope(envelope(echo_message(task_id=execution.result_id)))

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


# Change caught: the outcome's compare-and-set without the timeline. While the task ran, a
# superseded attempt noted its own outcome in the run's timeline; this attempt's outcome must
# be written on top of that note, not over it.
@pytest.mark.django_db(transaction=True)
def test_the_outcome_keeps_a_note_written_while_the_task_ran(calls, monkeypatch):
    from gyrinx_tasks.models import TaskExecutionQuerySet

    execution = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                             args=["hi"])
    delivery = parse_envelope(envelope(echo_message(task_id=execution.result_id)))
    real_write, noted = TaskExecutionQuerySet.write_transition, []

    def note_before_the_outcome(self, run):
        # The outcome's write: the only one expecting the run RUNNING (the start's expects it
        # READY, as read).
        if run.progress_as_read()["status"] == State.RUNNING and not noted:
            row = TaskExecution.objects.get(pk=run.pk)
            row.note("attempt 0 succeeded after it was superseded")
            row.save(update_fields=["timeline", "timeline_omitted"])
            noted.append(row.pk)
        return real_write(self, run)

    monkeypatch.setattr(TaskExecutionQuerySet, "write_transition", note_before_the_outcome)
    outcome = handle_delivery(delivery, "raw")

    stored = TaskExecution.objects.get(pk=execution.pk)
    assert noted and outcome.kind == "ran"
    assert len(calls) == 1  # run once: the note made the write go through the locked path
    assert stored.status == State.SUCCESSFUL
    assert [entry.get("note") for entry in stored.timeline].count(
        "attempt 0 succeeded after it was superseded") == 1
    assert [entry["to"] for entry in stored.timeline][-1] == State.SUCCESSFUL


# Change caught: an outcome remembered after a database failure, lost when the unlocked
# claim races. The redelivery that should record it decides again under the lock, and must
# still find it there (not answer busy and later run the task again).
@pytest.mark.django_db(transaction=True)
def test_an_outcome_recorded_late_survives_a_race_of_the_unlocked_claim(calls, monkeypatch):
    from django.utils import timezone

    from gyrinx_tasks import record
    from gyrinx_tasks.outcomes import OutcomeKind

    execution = TaskExecution.objects.create(
        task_name="echo", task_path="tests.tasks.echo", args=["hi"], status=State.RUNNING,
        attempts=1, last_attempted_at=timezone.now())
    record.remember((execution.pk, 1), OutcomeKind.RAN, lambda run: run.succeed("hi"))
    delivery = parse_envelope(envelope(echo_message(task_id=execution.result_id)))
    reads = change_after_first_read(monkeypatch, note_elsewhere)
    outcome = handle_delivery(delivery, "raw")

    stored = TaskExecution.objects.get(pk=execution.pk)
    assert len(reads) == 2 and outcome.kind == "ran"
    assert (stored.status, stored.return_value, calls) == (State.SUCCESSFUL, "hi", [])
    assert any("recorded late" in (entry.get("note") or "") for entry in stored.timeline)
