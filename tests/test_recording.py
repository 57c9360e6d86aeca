"""Recording an attempt's outcome (gyrinx_tasks/record.py, runner.py): success or failure with
its error, an outcome the database refuses or cannot store, an outcome recorded late on a
redelivery, an attempt superseded by a newer one, and the runs of other backends recorded
from Django's signals without breaking the caller.

Tests marked "Change caught" fail under a small code change that once left the whole suite
green (scripts/mutation_check.py applies them); the others were written from mutmut's
survivors and name the mutants they kill (docs/testing.md, "Mutation testing").
"""

import logging

import pytest
from django.db import (
    DatabaseError,
    DataError,
    OperationalError,
    transaction,
)
from django.utils import timezone

from gyrinx_tasks import claim, execute, record
from gyrinx_tasks.models import (
    State,
    TaskExecution,
    TaskExecutionQuerySet,
)
from gyrinx_tasks.outcomes import OutcomeKind
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from tests import tasks
from tests.helpers import (
    change_after_first_read,
    envelope,
    finished_statuses,
    note_elsewhere,
    on_outcome_write,
    push,
    stuck_echo_run,
    task_message,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_oidc", "calls", "fresh_unrecorded"),
]
ENQUEUED = "2026-11-23T10:00:00+00:00"


# Change caught: the outcome's compare-and-set without the timeline. While the task ran, a
# superseded attempt noted its own outcome in the run's timeline; this attempt's outcome must
# be written on top of that note, not over it.
@pytest.mark.django_db(transaction=True)
def test_the_outcome_keeps_a_note_written_while_the_task_ran(calls, monkeypatch):
    from gyrinx_tasks.models import TaskExecutionQuerySet

    execution = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                             args=["hi"])
    delivery = parse_envelope(envelope(task_message(execution.result_id, enqueued_at=ENQUEUED)))
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

    from gyrinx_tasks import record
    from gyrinx_tasks.outcomes import OutcomeKind

    execution = TaskExecution.objects.create(
        task_name="echo", task_path="tests.tasks.echo", args=["hi"], status=State.RUNNING,
        attempts=1, last_attempted_at=timezone.now())
    record.remember((execution.pk, 1), OutcomeKind.RAN, lambda run: run.succeed("hi"))
    delivery = parse_envelope(envelope(task_message(execution.result_id, enqueued_at=ENQUEUED)))
    reads = change_after_first_read(monkeypatch, note_elsewhere)
    outcome = handle_delivery(delivery, "raw")

    stored = TaskExecution.objects.get(pk=execution.pk)
    assert len(reads) == 2 and outcome.kind == "ran"
    assert (stored.status, stored.return_value, calls) == (State.SUCCESSFUL, "hi", [])
    assert any("recorded late" in (entry.get("note") or "") for entry in stored.timeline)


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


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _finish mutant 26: a run deleted (by staff) while its task ran records nothing; the
# attempt's answer says its outcome is not the run's, and no row comes back.
def test_an_outcome_for_a_run_deleted_meanwhile_is_not_recorded(monkeypatch):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(task_message(task_id=run.result_id)))

    def delete(row):
        TaskExecution.objects.filter(pk=row.pk).delete()
        return 0  # the compare-and-set found no row

    on_outcome_write(monkeypatch, delete)
    outcome = handle_delivery(delivery, "raw")

    assert outcome.kind == "superseded"
    assert not TaskExecution.objects.exists()


def start_again(row):
    """Another delivery started the run again (attempt 2) while attempt 1 ran."""
    current = TaskExecution.objects.using("default").get(pk=row.pk)
    current.start("other-worker", 2)
    current.save()


# _finish mutants 21, 27, _finished_run mutants 1, 3, 4, _record_outcome mutants 75, 76, 79:
# an attempt that finishes after a newer one started leaves the newer attempt's record alone,
# notes its outcome (in a transaction on the routers' write database), answers with the run
# as it now is, and task_finished reports the attempt's own outcome.
def test_a_superseded_attempt_leaves_the_newer_attempt_running(monkeypatch, settings):
    opened, atomic = [], transaction.atomic

    def spy(using=None, savepoint=True, durable=False):
        opened.append(using)
        return atomic(using=using, savepoint=savepoint, durable=durable)

    monkeypatch.setattr(claim.transaction, "atomic", spy)
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(task_message(task_id=run.result_id)))
    on_outcome_write(monkeypatch, start_again)
    seen, disconnect = finished_statuses()
    settings.DATABASE_ROUTERS = ["tests.helpers.RunsReadFromAReplica"]
    try:
        outcome = handle_delivery(delivery, "raw")
    finally:
        disconnect()
        settings.DATABASE_ROUTERS = []

    stored = TaskExecution.objects.get(pk=run.pk)
    assert (stored.status, stored.attempts, stored.return_value) == (State.RUNNING, 2, None)
    assert stored.timeline[-1]["note"].startswith("attempt 1 succeeded after it was superseded")
    assert outcome.kind == "superseded" and outcome.execution is not None
    assert (outcome.execution.pk, outcome.execution.attempts) == (run.pk, 2)
    assert outcome.detail.startswith("Attempt 1 succeeded, but the run was started again")
    # The superseded attempt's outcome is not the run's: the run has not ended, so no
    # task_finished (issue 16; this asserted ["SUCCESSFUL"] before).
    assert seen == []
    # The router writes runs to "default", atomic()'s default too: only the alias each
    # transaction is opened with shows that the router was asked.
    assert opened and set(opened) == {"default"}


# _record_outcome mutants 43-47, 54, 55, 59, 67, 69, 70, 71: the database refused the outcome
# (an outage): the answer names the run and quotes the database's error, cut to 300
# characters; the log line says which task, run and attempt, and what the database said.
def test_an_unrecorded_outcome_names_the_run_and_quotes_the_database(monkeypatch, caplog):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(task_message(task_id=run.result_id)))
    error = "disk I/O error " + "x" * 400

    def refuse(row):
        raise OperationalError(error)

    on_outcome_write(monkeypatch, refuse)
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        outcome = handle_delivery(delivery, "raw")

    assert [r.getMessage() for r in caplog.records] == [
        f"Task echo ({run.result_id}) attempt 1 succeeded, but the database refused its "
        f"outcome: {error}"]
    assert outcome.kind == "unrecorded" and outcome.execution is not None
    assert outcome.execution.pk == run.pk
    assert f"(the database failed: {error[:299]}…)" in outcome.detail
    assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING


# _record_outcome mutants 13-27, 29, 31-34, 89: an outcome the database cannot store (a value
# it refuses) makes the attempt FAILED with that reason, answered as a failure (500, retry).
def test_an_outcome_the_database_refuses_fails_the_attempt_with_the_reason(client,
                                                                         monkeypatch):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])

    def refuse(row):
        raise DataError("value too long for the column")

    on_outcome_write(monkeypatch, refuse)
    response = push(client, envelope(task_message(task_id=run.result_id)))

    reason = ("The task succeeded, but its outcome could not be stored: value too long for "
              "the column")
    assert response.status_code == 500, response.content
    assert response.json()["outcome"] == "failed" and response.json()["detail"] == reason
    stored = TaskExecution.objects.get(pk=run.pk)
    assert (stored.status, stored.return_value) == (State.FAILED, None)
    assert [(e["exception_class_path"], e["traceback"]) for e in stored.errors] == [
        ("django.db.utils.DataError", reason)]


# _record_outcome mutant 89: a failed attempt answers with what failed.
def test_a_failed_attempt_answers_with_the_exception(client):
    response = push(client, envelope(task_message(task_name="explode", args=["kaput"])))
    assert response.status_code == 500
    assert response.json()["detail"] == "builtins.RuntimeError: kaput"


# _remember_unrecorded mutants 2, 4: of the outcomes a process could not record, it forgets
# the oldest first and keeps the newest up to its limit (here 1).
def test_the_newest_unrecorded_outcome_is_kept(monkeypatch, calls):
    monkeypatch.setattr(record, "UNRECORDED_LIMIT", 1)
    runs = [TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                         args=["hi"]) for _ in range(2)]
    deliveries = [parse_envelope(envelope(task_message(task_id=run.result_id), message_id=f"m-{n}"))
                  for n, run in enumerate(runs)]
    real_write = TaskExecutionQuerySet.write_transition

    def refuse_outcomes(self, run):
        if run.progress_as_read()["status"] == State.RUNNING:
            raise OperationalError("the database is away")
        return real_write(self, run)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TaskExecutionQuerySet, "write_transition", refuse_outcomes)
        assert [handle_delivery(d, "raw").kind for d in deliveries] == ["unrecorded"] * 2
    assert len(calls) == 2

    newest, oldest = handle_delivery(deliveries[1], "raw"), handle_delivery(deliveries[0], "raw")

    assert newest.kind == "ran"
    assert TaskExecution.objects.get(pk=runs[1].pk).status == State.SUCCESSFUL
    assert oldest.kind == "busy"  # forgotten: it runs again once the ack deadline passes
    assert TaskExecution.objects.get(pk=runs[0].pk).status == State.RUNNING
    assert len(calls) == 2


# _decide mutants 30-38: an outcome recorded late on a redelivery answers with it.
def test_an_outcome_recorded_late_answers_with_the_run(client):
    run = stuck_echo_run()
    record.remember((run.pk, 1), OutcomeKind.RAN, lambda row: row.succeed("hi"))
    answer = push(client, envelope(task_message(task_id=run.result_id))).json()
    assert answer == {"outcome": "ran",
                      "detail": "The outcome of an earlier attempt, recorded late.",
                      "result_id": run.result_id, "status": "SUCCESSFUL"}


# handle_delivery: a failure's answer quotes the exception's message, cut to 2,000
# characters; the run keeps the whole traceback.
def test_a_long_exception_message_is_cut_in_the_answer(client):
    text = "y" * 3000
    answer = push(client, envelope(task_message(task_name="explode", args=[text]))).json()
    assert answer["detail"] == f"builtins.RuntimeError: {'y' * 1999}…"
    assert text in TaskExecution.objects.get().errors[0]["traceback"]


# _arguments_problem mutant 5, handle_delivery mutants 118, 209: a task that takes its context
# is given its arguments by keyword too (the context is bound first, as Django calls it); a
# run that succeeds answers with nothing more to say.
def test_a_context_task_takes_its_arguments_by_keyword(client):
    body = envelope(task_message(task_name="flaky", args=[], kwargs={"key": "k"}),
                    delivery_attempt=2)
    answer = push(client, body).json()
    assert (answer["outcome"], answer["status"], answer["detail"]) == ("ran", "SUCCESSFUL", "")
    assert TaskExecution.objects.get().return_value == {"key": "k", "attempt": 2}


# handle_delivery mutants 151, 155: a failed attempt whose outcome the database refuses says
# what failed and how long until the task runs again.
def test_a_failure_the_database_cannot_record_says_what_failed(client, monkeypatch):
    def refuse(row):
        raise OperationalError("the database is away")

    on_outcome_write(monkeypatch, refuse)
    response = push(client, envelope(task_message(task_name="explode", args=["kaput"])))

    assert (response.status_code, response.json()["outcome"]) == (429, "unrecorded")
    detail = response.json()["detail"]
    assert detail.startswith("The task ran and failed (builtins.RuntimeError), but its outcome "
                             "could not be recorded (the database failed: the database is away)")
    assert detail.endswith("the task runs again after the ack deadline (300 s).")


class Unserialisable(Exception):
    """An error of the project's own, raised where the task's return value is prepared."""


# handle_delivery mutants 128, 133: an error is recorded under its full dotted path and with
# its whole traceback as Python formats it.
def test_an_error_is_recorded_with_its_path_and_traceback(client, monkeypatch):
    def refuse(value):
        raise Unserialisable("no JSON for this value")

    monkeypatch.setattr(execute, "normalize_json", refuse)
    answer = push(client, envelope(task_message())).json()

    path = f"{__name__}.Unserialisable"
    assert (answer["outcome"], answer["detail"]) == ("failed", f"{path}: no JSON for this value")
    [error] = TaskExecution.objects.get().errors
    assert error["exception_class_path"] == path
    assert error["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert error["traceback"].endswith(f"{path}: no JSON for this value\n")
