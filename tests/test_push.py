"""The push endpoint, one test (at least) per row of PRODUCT.md's status table."""

import logging

import pytest
from django.db import OperationalError, connection
from django.tasks.signals import task_finished, task_started

from gyrinx_tasks.models import KillSwitch, State, TaskExecution, Trigger
from tests import tasks
from tests.helpers import envelope

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_oidc")]
URL = "/tasks/pubsub/"


def push(client, body: bytes, **headers):
    return client.post(URL, body, content_type="application/json", headers=headers)


def message(task_name="add", args=None, kwargs=None, task_id="t-1", **extra):
    return {"task_id": task_id, "task_name": task_name, "args": [1, 2] if args is None else args,
            "kwargs": kwargs or {}, "enqueued_at": "2026-11-23T10:00:00+00:00", **extra}


def test_task_that_returns_answers_200_and_is_successful(client):
    response = push(client, envelope(message()))

    assert response.status_code == 200
    execution = TaskExecution.objects.get(result_id="t-1")
    assert execution.status == State.SUCCESSFUL
    assert execution.return_value == 3
    assert execution.attempts == 1
    assert execution.message_id == "m-1"
    assert response.json()["result_id"] == "t-1"
    assert [e["to"] for e in execution.timeline] == ["READY", "RUNNING", "SUCCESSFUL"]


def test_enqueued_run_is_picked_up_by_its_result_id(client):
    execution = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add",
                                             args=[5, 6])
    push(client, envelope(message(args=[5, 6], task_id=execution.result_id)))
    execution.refresh_from_db()
    assert execution.status == State.SUCCESSFUL
    assert execution.return_value == 11
    assert TaskExecution.objects.count() == 1


def test_signals_are_sent_around_the_run(client):
    seen = []

    def started(sender, task_result, **kw):
        seen.append(("started", task_result.status))

    def finished(sender, task_result, **kw):
        seen.append(("finished", task_result.status, task_result.return_value))

    task_started.connect(started)
    task_finished.connect(finished)
    try:
        push(client, envelope(message()))
    finally:
        task_started.disconnect(started)
        task_finished.disconnect(finished)
    assert seen == [("started", "RUNNING"), ("finished", "SUCCESSFUL", 3)]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"nomessage": 1}', "no 'message'"),
        (b'{"message": {"data": "e30="}}', "no 'messageId'"),
        (envelope(None, raw_data="%%%not-base64"), "not base64"),
        (envelope(["a", "list"]), "not a JSON object"),
        (envelope({"task_name": "add"}), "task_id"),
        (envelope(message(args="oops")), "'args' is not a list"),
        (envelope(message(kwargs=["x"])), "'kwargs' is not an object"),
        (envelope(message(enqueued_at="yesterday")), "enqueued_at"),
    ],
)
def test_malformed_delivery_is_acknowledged_and_kept(client, caplog, body, reason):
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        response = push(client, body)

    assert response.status_code == 200
    assert reason in response.json()["detail"]
    execution = TaskExecution.objects.get()
    assert execution.status == State.REJECTED
    assert execution.raw_message == body.decode("utf-8", errors="replace")
    assert reason in execution.status_detail
    assert any(r.levelno == logging.ERROR and reason in r.getMessage() for r in caplog.records)


def test_unknown_task_is_rejected(client):
    response = push(client, envelope(message(task_name="no_such_task")))
    assert response.status_code == 200
    execution = TaskExecution.objects.get()
    assert execution.status == State.REJECTED
    assert "no_such_task" in execution.status_detail
    assert "no_such_task" in response.json()["detail"]  # the body says why
    assert execution.message_id == "m-1"


def test_arguments_that_do_not_fit_are_rejected_without_running(client):
    tasks.CALLS.clear()
    response = push(client, envelope(message(args=[1, 2, 3])))
    assert response.status_code == 200
    execution = TaskExecution.objects.get(result_id="t-1")
    assert execution.status == State.REJECTED
    assert "do not fit tests.tasks.add" in execution.status_detail
    assert execution.attempts == 0


def test_enqueued_run_that_is_rejected_keeps_its_row(client):
    execution = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add")
    push(client, envelope(message(kwargs={"z": 1}, task_id=execution.result_id)))
    execution.refresh_from_db()
    assert execution.status == State.REJECTED
    assert TaskExecution.objects.count() == 1


def test_database_kill_switch_off_skips_and_acknowledges(client):
    KillSwitch.objects.create(task_name="echo", enabled=False, reason="incident 42")
    tasks.CALLS.clear()

    response = push(client, envelope(message(task_name="echo", args=["x"])))

    assert response.status_code == 200
    assert tasks.CALLS == []
    execution = TaskExecution.objects.get()
    assert execution.status == State.SKIPPED
    assert "database" in execution.status_detail


def test_environment_kill_switch_off_skips(client, monkeypatch):
    monkeypatch.setenv("ENABLE_ECHO", "false")
    tasks.CALLS.clear()
    response = push(client, envelope(message(task_name="echo", args=["x"])))
    assert response.status_code == 200
    assert tasks.CALLS == []
    assert TaskExecution.objects.get().status_detail == "Kill switch ENABLE_ECHO is off."


def test_kill_switch_row_that_is_on_runs(client):
    KillSwitch.objects.create(task_name="echo", enabled=True)
    assert push(client, envelope(message(task_name="echo", args=["x"]))).status_code == 200


def test_redelivery_of_a_successful_run_does_not_run_again(client):
    tasks.CALLS.clear()
    body = envelope(message(task_name="echo", args=["once"]))
    assert push(client, body).status_code == 200

    response = push(client, body)

    assert response.status_code == 200
    assert response.json()["outcome"] == "duplicate"
    assert tasks.CALLS == [(("once",), {})]
    assert TaskExecution.objects.get().attempts == 1


def test_task_that_raises_answers_500_and_records_the_attempt(client):
    response = push(client, envelope(message(task_name="explode", args=["kaboom"])))

    assert response.status_code == 500
    execution = TaskExecution.objects.get()
    assert execution.status == State.FAILED
    assert execution.attempts == 1
    [error] = execution.errors
    assert error["exception_class_path"] == "builtins.RuntimeError"
    assert "kaboom" in error["traceback"]
    assert error["attempt"] == 1

    # Pub/Sub redelivers: a second failed attempt is added, the first error is kept.
    response = push(client, envelope(message(task_name="explode", args=["again"]),
                                     delivery_attempt=2))
    execution.refresh_from_db()
    assert response.status_code == 500
    assert execution.attempts == 2
    assert [e["attempt"] for e in execution.errors] == [1, 2]


def test_takes_context_gets_the_real_delivery_attempt(client):
    response = push(client, envelope(message(task_name="report_attempt", args=[]),
                                     delivery_attempt=4))
    assert response.status_code == 200
    execution = TaskExecution.objects.get()
    assert execution.return_value == 4
    assert execution.attempts == 4
    assert execution.delivery_attempt == 4


def test_retry_after_failure_succeeds_and_keeps_the_first_error(client):
    body = envelope(message(task_name="flaky", args=["k"]))
    assert push(client, body).status_code == 500
    assert push(client, body).status_code == 200
    execution = TaskExecution.objects.get()
    assert execution.status == State.SUCCESSFUL
    assert execution.attempts == 2
    assert execution.return_value == {"key": "k", "attempt": 2}
    assert len(execution.errors) == 1
    assert "first attempt" in execution.errors[0]["traceback"]


def test_scheduled_deliveries_are_separate_runs_keyed_by_message_id(client):
    scheduled = {"task_id": "scheduled-test--gyrinx-scheduler--tests-tasks-nightly_cleanup",
                 "task_name": "nightly_cleanup", "args": [], "kwargs": {}}
    assert push(client, envelope(scheduled, message_id="s-1")).status_code == 200
    assert push(client, envelope(scheduled, message_id="s-2")).status_code == 200
    assert push(client, envelope(scheduled, message_id="s-2")).status_code == 200  # duplicate

    runs = TaskExecution.objects.order_by("message_id")
    assert [r.message_id for r in runs] == ["s-1", "s-2"]
    assert {r.trigger for r in runs} == {Trigger.SCHEDULE}
    assert {r.task_id for r in runs} == {scheduled["task_id"]}
    assert len({r.result_id for r in runs}) == 2


def test_trigger_attribute_is_recorded(client):
    push(client, envelope(message(), attributes={"trigger": "run_now"}))
    assert TaskExecution.objects.get().trigger == Trigger.RUN_NOW


def test_database_unavailable_answers_429_and_loses_nothing(client):
    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection pool exhausted")

    body = envelope(message())
    with connection.execute_wrapper(refuse):
        response = push(client, body)

    assert response.status_code == 429
    assert not TaskExecution.objects.exists()
    # Pub/Sub redelivers once the database is back; the run happens then.
    assert push(client, body).status_code == 200
    assert TaskExecution.objects.get().status == State.SUCCESSFUL


def test_get_is_not_allowed(client):
    assert client.get(URL).status_code == 405



@pytest.mark.django_db(transaction=True)
def test_tasks_run_outside_a_request_transaction_even_under_atomic_requests(client):
    from django.db import connections

    connections["default"].settings_dict["ATOMIC_REQUESTS"] = True
    try:
        response = push(client, envelope(message(task_name="in_transaction", args=[])))
    finally:
        connections["default"].settings_dict["ATOMIC_REQUESTS"] = False
    assert response.status_code == 200
    assert TaskExecution.objects.get().return_value is False


def test_redelivery_while_the_run_is_still_running_asks_for_a_retry(client):
    from datetime import timedelta

    from django.utils import timezone

    execution = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add",
                                             args=[1, 2])
    execution.start("other-worker")
    execution.save()

    response = push(client, envelope(message(task_id=execution.result_id)))

    assert response.status_code == 429
    assert response.json()["outcome"] == "busy"
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == (State.RUNNING, 1)

    # Once the route's ack deadline (300 s) has passed, the first worker is presumed gone.
    TaskExecution.objects.filter(pk=execution.pk).update(
        last_attempted_at=timezone.now() - timedelta(seconds=301))
    assert push(client, envelope(message(task_id=execution.result_id))).status_code == 200
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == (State.SUCCESSFUL, 2)


# A row another transaction is still writing: tests/test_races.py races two real
# transactions (test_a_push_for_an_uncommitted_enqueue_is_busy_and_then_runs).


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _reply mutants 9, 11: the answer says the run's status, not only its id.
def test_the_answer_names_the_run_and_its_status(client, settings):
    settings.TASKS_VERIFY_OIDC = False

    ran = push(client, envelope(message(task_id="t-ran"))).json()
    rejected = push(client, envelope(["no", "task"], message_id="m-2")).json()

    assert (ran["outcome"], ran["result_id"], ran["status"]) == ("ran", "t-ran", State.SUCCESSFUL)
    assert (rejected["outcome"], rejected["status"]) == ("rejected", State.REJECTED)


# _push mutants 62-66, 70, 73, 77-79: a database outage answers 429 with a sentence, and the
# log line carries the database's own error.
def test_a_database_outage_is_answered_and_logged_with_its_error(client, settings, caplog):
    settings.TASKS_VERIFY_OIDC = False

    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection pool exhausted")

    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        with connection.execute_wrapper(refuse):
            response = push(client, envelope(message(task_id="t-outage")))

    assert response.status_code == 429
    assert response.json() == {"outcome": "database_unavailable",
                               "detail": "The database is unavailable; retry later."}
    assert ("Database unavailable while handling a push; asking for redelivery: connection "
            "pool exhausted") in [r.getMessage() for r in caplog.records]
