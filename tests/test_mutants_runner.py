"""Running a delivery (gyrinx_tasks/runner.py): behaviour that mutmut showed no test held.

Each test names the mutants it kills (docs/testing.md, "Mutation testing"); the rest of
runner.py's survivors are accounted for in scripts/mutation/survivors.md. The tests go through
the push endpoint or handle_delivery and check the recorded run; where a database failure or
another writer is needed, they wrap the statement the runner calls (as tests/test_regressions.py
does), never the runner's own functions.
"""

import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DataError, IntegrityError, OperationalError, transaction
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from gyrinx_tasks import claim, execute, record, registry
from gyrinx_tasks.backend import PubSubBackend
from gyrinx_tasks.messages import RECORDED_ATTRIBUTE
from gyrinx_tasks.models import (
    KillSwitch,
    State,
    SwitchMode,
    TaskExecution,
    TaskExecutionQuerySet,
    Trigger,
)
from gyrinx_tasks.outcomes import OutcomeKind
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from gyrinx_tasks.views import ACK
from gyrinx_tasks.workers import current_worker_id
from tests import tasks
from tests.helpers import envelope, push
from tests.test_regressions import change_after_first_read, note_elsewhere

pytestmark = pytest.mark.django_db(transaction=True)
ENQUEUED = "2026-11-23T10:00:00+00:00"


@pytest.fixture(autouse=True)
def no_oidc(settings):
    settings.TASKS_VERIFY_OIDC = False


@pytest.fixture(autouse=True)
def calls():
    tasks.CALLS.clear()
    yield tasks.CALLS
    tasks.CALLS.clear()


@pytest.fixture(autouse=True)
def fresh_unrecorded(monkeypatch):
    # Outcomes remembered by one test must not be found by another's redelivery.
    monkeypatch.setattr(record, "_unrecorded", OrderedDict())


def message(task_id="t-1", task_name="echo", args=("hi",), **fields):
    return {"task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": {},
            **fields}


def finished_statuses():
    """Collect the status task_finished reports for each run, until disconnected."""
    seen: list[str] = []

    def finished(sender, task_result, **kwargs):
        seen.append(task_result.status)

    task_finished.connect(finished, weak=False)
    return seen, lambda: task_finished.disconnect(finished)


def on_outcome_write(monkeypatch, action):
    """Call ``action(run)`` instead of the first write of an attempt's outcome (the only write
    that expects the run RUNNING); ``action`` may write, raise, or return whether it wrote."""
    real_write, done = TaskExecutionQuerySet.write_transition, []

    def write(self, run):
        if run.progress_as_read()["status"] == State.RUNNING and not done:
            done.append(run.pk)
            result = action(run)
            if result is not None:
                return bool(result)
        return real_write(self, run)

    monkeypatch.setattr(TaskExecutionQuerySet, "write_transition", write)
    return done


# _claim mutants 20, 22, 23, 27, 30, 36, 44, 50, 53, _trigger mutant 14: a delivery of a run
# our backend did not record first (another publisher's message) makes the run from the
# message: its task, path, arguments, the message's enqueued_at, the task id as result id, an
# enqueue (not scheduler) trigger, and a first READY entry saying which message delivered it.
def test_a_run_not_recorded_before_is_made_from_its_message(client, calls):
    response = push(client, envelope(message(task_id="t-made", args=(1, 2), kwargs={"k": "v"},
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
    assert push(client, envelope(message())).status_code == 200
    run = TaskExecution.objects.get()
    assert run.enqueued_at is not None and before <= run.enqueued_at <= timezone.now()


# _claim mutants 37, 38, 42, 43, 45, 46, 47: "Run now" from the admin says who asked, in the
# run's first timeline entry (cut to the 150 characters of a username).
def test_a_run_now_delivery_says_who_asked_for_it(client):
    name = "a" * 149 + "bc"
    assert push(client, envelope(message(), message_id="m-now",
                                 attributes={"requested_by": name})).status_code == 200
    run = TaskExecution.objects.get()
    assert run.timeline[0]["note"] == f"delivered as message m-now; run now by {name[:150]}"


# _claim mutants 33, 34: a task id of up to 64 characters is the run's result id (Django's
# get_result() finds it); a longer one cannot be, and the run gets one of its own.
@pytest.mark.parametrize("length, kept", [(64, True), (65, False)])
def test_a_task_id_is_the_result_id_up_to_64_characters(client, length, kept):
    task_id = "t" * length
    assert push(client, envelope(message(task_id=task_id))).status_code == 200
    run = TaskExecution.objects.get()
    assert run.task_id == task_id
    assert (run.result_id == task_id) is kept


# _claim mutants 60, 61: a run recorded before its publish has no message id; a delivery that
# raced the unlocked path and was decided under the lock still records the message's id.
def test_a_delivery_decided_under_the_lock_records_its_message_id(calls, monkeypatch):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(message(task_id=run.result_id), message_id="m-late"))
    reads = change_after_first_read(monkeypatch, note_elsewhere)

    outcome = handle_delivery(delivery, "raw")

    assert len(reads) == 2 and outcome.kind == "ran"
    assert TaskExecution.objects.get(pk=run.pk).message_id == "m-late"


# record_rejection mutants 1, 77, 78, 79: a delivery for a task no longer routed (removed in
# a deploy) settles the run its task id names, rather than leaving it READY beside a new row.
def test_a_delivery_for_an_unknown_task_rejects_the_run_it_names(client):
    run = TaskExecution.objects.create(task_name="gone", task_path="tests.tasks.gone")

    response = push(client, envelope(message(task_id=run.result_id, task_name="gone")))

    assert response.status_code == ACK and response.json()["outcome"] == "rejected"
    stored = TaskExecution.objects.get()
    assert (stored.pk, stored.status) == (run.pk, State.REJECTED)
    assert "gone" in stored.status_detail


# record_rejection mutants 90, 91, 93, 94: a rejected delivery with no run to settle is a new
# run carrying the message's task id, task name and trigger (a scheduler firing stays one).
def test_a_rejected_scheduled_delivery_is_a_scheduled_run_of_its_task(client):
    body = envelope(message(task_id="scheduled-gone", task_name="gone"), message_id="m-sched")

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
        push(client, envelope(message(task_name="gone"), message_id="m-log"))
        push(client, b'{"message": {}}')
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Rejected")]
    assert lines[0].startswith("Rejected Pub/Sub delivery m-log: ") and "gone" in lines[0]
    assert lines[1].startswith("Rejected Pub/Sub delivery ?: The message has no 'messageId'")


# _settle_or_start mutant 18: a first delivery whose arguments do not fit its task is
# rejected under the lock, keeping the raw message like every rejection.
def test_a_first_delivery_with_arguments_that_do_not_fit_keeps_its_raw_message(client):
    body = envelope(message(task_name="add", args=["only one"]), message_id="m-args")
    response = push(client, body)
    assert response.json()["outcome"] == "rejected"
    run = TaskExecution.objects.get()
    assert run.status == State.REJECTED and "do not fit" in run.status_detail
    assert run.raw_message == body.decode()


# _uncommitted mutants 7, 10, 25, 28: the answers say why: a recorded run not visible yet is
# "not committed yet" (retry), one still invisible an hour on was rolled back (rejected).
def test_a_recorded_run_not_visible_is_busy_then_rejected_with_a_reason(client, calls):
    now = timezone.now()
    recent = message(task_id="t-open", enqueued_at=now.isoformat())
    old = message(task_id="t-gone", enqueued_at=(now - timedelta(hours=2)).isoformat())

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
    old = message(task_id=slow.result_id,
                  enqueued_at=(timezone.now() - timedelta(hours=2)).isoformat())

    response = push(client, envelope(old, attributes={RECORDED_ATTRIBUTE: "1"}))

    assert (response.status_code, response.json()["outcome"]) == (429, "busy")
    assert TaskExecution.objects.get(pk=slow.pk).status == State.READY
    assert TaskExecution.objects.count() == 1


# _finish mutant 26: a run deleted (by staff) while its task ran records nothing; the
# attempt's answer says its outcome is not the run's, and no row comes back.
def test_an_outcome_for_a_run_deleted_meanwhile_is_not_recorded(monkeypatch):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    delivery = parse_envelope(envelope(message(task_id=run.result_id)))

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
    delivery = parse_envelope(envelope(message(task_id=run.result_id)))
    on_outcome_write(monkeypatch, start_again)
    seen, disconnect = finished_statuses()
    settings.DATABASE_ROUTERS = ["tests.test_races.RunsReadFromAReplica"]
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
    delivery = parse_envelope(envelope(message(task_id=run.result_id)))
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
    response = push(client, envelope(message(task_id=run.result_id)))

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
    response = push(client, envelope(message(task_name="explode", args=["kaput"])))
    assert response.status_code == 500
    assert response.json()["detail"] == "builtins.RuntimeError: kaput"


# _remember_unrecorded mutants 2, 4: of the outcomes a process could not record, it forgets
# the oldest first and keeps the newest up to its limit (here 1).
def test_the_newest_unrecorded_outcome_is_kept(monkeypatch, calls):
    monkeypatch.setattr(record, "UNRECORDED_LIMIT", 1)
    runs = [TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                         args=["hi"]) for _ in range(2)]
    deliveries = [parse_envelope(envelope(message(task_id=run.result_id), message_id=f"m-{n}"))
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


@pytest.fixture
def limited(settings):
    """The registry of tests/test_attempts.py: echo and explode get two attempts at most."""
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.test_attempts"
    yield
    registry.clear_cache()


def stuck(attempts=1, **fields):
    """An echo run left RUNNING by a worker that stopped, its ack deadline long past."""
    return TaskExecution.objects.create(
        task_name="echo", task_path="tests.tasks.echo", args=["hi"], status=State.RUNNING,
        attempts=attempts, last_attempted_at=timezone.now() - timedelta(hours=1), **fields)


def log_lines(caplog):
    # The package's own lines (Django's django.tasks logger also logs each task_finished).
    return [line.getMessage() for line in caplog.records if line.name == "gyrinx_tasks"]


# _decide mutants 112, 117: the route's last allowed attempt runs (2 of 2); only a delivery
# past it gives up.
def test_the_last_allowed_attempt_runs(client, limited, calls):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"], status=State.FAILED, attempts=1)
    response = push(client, envelope(message(task_id=run.result_id)))
    assert response.json()["outcome"] == "ran"
    assert TaskExecution.objects.get().attempts == 2 and len(calls) == 1


# _decide mutants 111, 159-187: a run that has had its attempts (the limit was lowered, or
# its failure was recorded before the limit existed) gives up on the next delivery without
# running it: FAILED for good, said in the answer, the run and the log.
def test_a_run_out_of_attempts_gives_up_on_its_next_delivery(client, limited, calls, caplog):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"], status=State.FAILED, attempts=2)
    with caplog.at_level(logging.INFO, logger="gyrinx_tasks"):
        response = push(client, envelope(message(task_id=run.result_id)))

    reason = ("Gave up after 2 attempts (the route's max_attempts is 2); Pub/Sub is not asked "
              "to deliver it again. Retry it from the admin once the cause is fixed.")
    assert (response.status_code, response.json()) == (ACK, {
        "outcome": "gave_up", "detail": reason, "result_id": run.result_id, "status": "FAILED"})
    stored = TaskExecution.objects.get()
    assert (stored.gave_up, stored.status_detail, stored.attempts) == (True, reason, 2)
    assert log_lines(caplog) == [f"Gave up echo ({run.result_id}): {reason}"]
    assert calls == []


# _decide mutants 118-134: a run stuck RUNNING whose worker stopped is not run again when its
# limit is reached or its switch is off: the lost attempt is recorded as a timeout saying
# why it is not run again.
@pytest.mark.parametrize("why", ["limit", "switch"])
def test_a_stuck_attempt_not_run_again_is_recorded_as_a_timeout(client, limited, calls, why):
    run = stuck(attempts=2 if why == "limit" else 1)
    if why == "switch":
        KillSwitch.objects.create(task_name="echo", enabled=False)

    outcome = push(client, envelope(message(task_id=run.result_id))).json()["outcome"]

    stored = TaskExecution.objects.get()
    assert outcome == ("gave_up" if why == "limit" else "skipped")
    [error] = stored.errors
    assert error["exception_class_path"] == "builtins.TimeoutError"
    assert error["traceback"] == (
        f"Attempt {stored.attempts} did not finish within the ack deadline (300 s); its worker "
        "stopped or was cut off. It is not run again because " + (
            "the route's max_attempts is reached." if why == "limit" else
            "the kill switch is off."))
    assert calls == []


# _decide mutants 87-99, 140-158: held and skipped deliveries answer with the run and the
# switch's reason, and are logged with the task, the run and that reason.
@pytest.mark.parametrize("mode", [SwitchMode.HOLD, SwitchMode.SKIP])
def test_switched_off_deliveries_are_logged_with_their_run(client, caplog, mode):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=mode)
    with caplog.at_level(logging.INFO, logger="gyrinx_tasks"):
        response = push(client, envelope(message(task_id=run.result_id)))

    held = mode == SwitchMode.HOLD
    detail = ("Kill switch for echo is off in the database (hold): Pub/Sub keeps the message "
              "until it is switched on." if held else
              "Kill switch for echo is off in the database.")
    assert response.json() == {"outcome": "held" if held else "skipped", "detail": detail,
                               "result_id": run.result_id,
                               "status": "READY" if held else "SKIPPED"}
    assert f"{'Held' if held else 'Skipped'} echo ({run.result_id}): {detail}" in log_lines(
        caplog)


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
                   enumerate([message(task_id=done.result_id),
                              message(task_id=running.result_id),
                              message(task_id=waiting.result_id, task_name="add")])]

    assert answers[0] == {"outcome": "duplicate", "detail": "Run already SUCCESSFUL.",
                          "result_id": done.result_id, "status": "SUCCESSFUL"}
    assert answers[1] == {"outcome": "busy",
                          "detail": "This run is still running on another worker.",
                          "result_id": running.result_id, "status": "RUNNING"}
    assert answers[2]["outcome"] == "rejected" and answers[2]["status"] == "REJECTED"
    assert answers[2]["detail"].startswith("The arguments do not fit tests.tasks.add: ")
    assert log_lines(caplog) == [f"Rejected Pub/Sub delivery m-2: {answers[2]['detail']}"]
    rejected = TaskExecution.objects.get(pk=waiting.pk)
    assert rejected.status_detail == answers[2]["detail"]
    assert rejected.raw_message.startswith('{"message": ') and '"m-2"' in rejected.raw_message


# _decide mutants 30-38: an outcome recorded late on a redelivery answers with it.
def test_an_outcome_recorded_late_answers_with_the_run(client):
    run = stuck()
    record.remember((run.pk, 1), OutcomeKind.RAN, lambda row: row.succeed("hi"))
    answer = push(client, envelope(message(task_id=run.result_id))).json()
    assert answer == {"outcome": "ran",
                      "detail": "The outcome of an earlier attempt, recorded late.",
                      "result_id": run.result_id, "status": "SUCCESSFUL"}


# _decide mutants 194, 195: an attempt records the worker that runs it and Pub/Sub's
# delivery attempt.
def test_an_attempt_records_its_worker_and_delivery_attempt(client):
    assert push(client, envelope(message(), delivery_attempt=3)).status_code == 200
    run = TaskExecution.objects.get()
    assert (run.worker_ids, run.delivery_attempt) == ([current_worker_id()], 3)


# handle_delivery: receivers connected for the backend's class (Django's documented way to
# listen to one backend) get task_started and task_finished.
def test_task_signals_are_sent_by_the_backend_class(client):
    seen = []

    def started(sender, task_result, **kwargs):
        seen.append(("started", task_result.status))

    def finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.status))

    task_started.connect(started, sender=PubSubBackend, weak=False)
    task_finished.connect(finished, sender=PubSubBackend, weak=False)
    try:
        push(client, envelope(message()))
        push(client, envelope(message(task_id="t-2", task_name="explode", args=[]),
                              message_id="m-2"))
    finally:
        task_started.disconnect(started, sender=PubSubBackend)
        task_finished.disconnect(finished, sender=PubSubBackend)
    # explode's failed attempt will be retried: the run has not ended, so no task_finished
    # (issue 16; this expected a ("finished", "FAILED") last before).
    assert seen == [("started", "RUNNING"), ("finished", "SUCCESSFUL"),
                    ("started", "RUNNING")]


# handle_delivery: a failure's answer quotes the exception's message, cut to 2,000
# characters; the run keeps the whole traceback.
def test_a_long_exception_message_is_cut_in_the_answer(client):
    text = "y" * 3000
    answer = push(client, envelope(message(task_name="explode", args=[text]))).json()
    assert answer["detail"] == f"builtins.RuntimeError: {'y' * 1999}…"
    assert text in TaskExecution.objects.get().errors[0]["traceback"]



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
    response = push(client, envelope(message()))
    assert (response.status_code, response.json()) == (429, {"outcome": outcome,
                                                             "detail": detail})
    assert calls == [] and not TaskExecution.objects.exists()


# _arguments_problem mutant 5, handle_delivery mutants 118, 209: a task that takes its context
# is given its arguments by keyword too (the context is bound first, as Django calls it); a
# run that succeeds answers with nothing more to say.
def test_a_context_task_takes_its_arguments_by_keyword(client):
    body = envelope(message(task_name="flaky", args=[], kwargs={"key": "k"}), delivery_attempt=2)
    answer = push(client, body).json()
    assert (answer["outcome"], answer["status"], answer["detail"]) == ("ran", "SUCCESSFUL", "")
    assert TaskExecution.objects.get().return_value == {"key": "k", "attempt": 2}


class MyPubSubBackend(PubSubBackend):
    """A project's own subclass of the backend, configured in TASKS."""


# handle_delivery mutants 92, 94: with a subclass of PubSubBackend configured, the signals'
# sender is that class, so receivers connected for it (Django's way to listen to one
# backend class) hear the runs of the push endpoint.
def test_task_signals_are_sent_by_a_configured_subclass(client, monkeypatch):
    from django.tasks import task_backends

    monkeypatch.setattr(task_backends["default"], "__class__", MyPubSubBackend)
    seen = []

    def finished(sender, task_result, **kwargs):
        seen.append((sender, task_result.status))

    task_finished.connect(finished, sender=MyPubSubBackend, weak=False)
    try:
        push(client, envelope(message()))
    finally:
        task_finished.disconnect(finished, sender=MyPubSubBackend)
    assert seen == [(MyPubSubBackend, "SUCCESSFUL")]


# handle_delivery mutants 151, 155: a failed attempt whose outcome the database refuses says
# what failed and how long until the task runs again.
def test_a_failure_the_database_cannot_record_says_what_failed(client, monkeypatch):
    def refuse(row):
        raise OperationalError("the database is away")

    on_outcome_write(monkeypatch, refuse)
    response = push(client, envelope(message(task_name="explode", args=["kaput"])))

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
    answer = push(client, envelope(message())).json()

    path = f"{__name__}.Unserialisable"
    assert (answer["outcome"], answer["detail"]) == ("failed", f"{path}: no JSON for this value")
    [error] = TaskExecution.objects.get().errors
    assert error["exception_class_path"] == path
    assert error["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert error["traceback"].endswith(f"{path}: no JSON for this value\n")


class RunsToDefaultOnly:
    """Runs are written to "default"; anything else the router is asked about goes to an
    alias that does not exist."""

    def db_for_write(self, model, **hints):
        return "default" if model is TaskExecution else "nowhere"


# _db mutant 1: the runner asks the routers where runs (TaskExecution) are written.
def test_the_runner_asks_the_routers_about_runs(client, settings):
    settings.DATABASE_ROUTERS = [f"{__name__}.RunsToDefaultOnly"]
    assert push(client, envelope(message())).json()["outcome"] == "ran"
