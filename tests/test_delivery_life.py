"""A run's life on the delivery side (issue 16, behaviours 5-8 and 13-15).

Each test goes through public interfaces only (the push endpoint, Django's task API, the
database through Django's public ORM and execute_wrapper), so that it runs unchanged on the
code before the change and shows the behaviour it pins failing there. The module is also a
registry (TASKS_REGISTRY = "tests.test_delivery_life") for the task it routes.
"""

import secrets
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.core import checks
from django.db import OperationalError, connection, connections, transaction
from django.tasks import task, task_backends
from django.utils import timezone

from gyrinx_tasks import TaskRoute, registry
from gyrinx_tasks.models import KillSwitch, State, TaskExecution
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.scheduling.firing import scheduled_message
from tests import tasks as jobs
from tests.helpers import FakePublisher, envelope, push, use_publisher
from tests.registry import tasks as GOOD_ROUTES

pytestmark = pytest.mark.usefixtures("no_oidc")

RECORDED = {"gyrinx_recorded": "1"}  # what our backend's messages carry


@task
def status_seen_from_outside(result_id: str) -> dict:
    """What another connection sees of this task's own run while the task runs."""
    seen: dict = {}

    def look() -> None:
        try:
            seen.update(TaskExecution.objects.using("default").filter(
                result_id=result_id).values("status").get())
        finally:
            connections.close_all()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join(30)
    return seen


tasks = [*GOOD_ROUTES, TaskRoute(status_seen_from_outside)]


@pytest.fixture
def this_registry(settings):
    registry.clear_cache()
    settings.TASKS_REGISTRY = __name__
    yield
    registry.clear_cache()


def echo_message(task_id: str, *args, enqueued_at=None) -> dict:
    return {"task_id": task_id, "task_name": "echo", "args": list(args) or ["hi"],
            "kwargs": {}, "enqueued_at": (enqueued_at or timezone.now()).isoformat()}


def forget_unrecorded() -> None:
    try:
        from gyrinx_tasks import record
    except ImportError:  # before issue 16: runner.py held the memory
        from gyrinx_tasks import runner
        runner._unrecorded.clear()  # type: ignore[attr-defined]
    else:
        record.clear()


# --- 5. A message id is unique within its topic only --------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_scheduled_firing_whose_message_id_another_task_used_still_runs(client):
    other = TaskExecution.objects.create(task_name="add", task_path="tests.jobs.add",
                                         message_id="1", status=State.SUCCESSFUL)
    route = get_route("nightly_cleanup")

    response = push(client, envelope(scheduled_message(route), message_id="1"))

    assert (response.status_code, response.json()["outcome"]) == (200, "ran"), response.content
    run = TaskExecution.objects.get(task_name="nightly_cleanup")
    assert (run.status, run.message_id, run.return_value) == (State.SUCCESSFUL, "1", "cleaned")
    assert TaskExecution.objects.get(pk=other.pk).status == State.SUCCESSFUL


@pytest.mark.django_db(transaction=True)
def test_an_enqueued_run_delivered_with_another_topics_message_id_runs(client):
    TaskExecution.objects.create(task_name="add", task_path="tests.jobs.add",
                                 message_id="7", status=State.SUCCESSFUL)
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.jobs.echo",
                                       args=["hi"])

    response = push(client, envelope(echo_message(run.result_id), message_id="7",
                                     attributes=RECORDED))

    assert (response.status_code, response.json()["outcome"]) == (200, "ran"), response.content
    run.refresh_from_db()
    assert (run.status, run.message_id) == (State.SUCCESSFUL, "7")


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_scheduled_message_make_one_run(client):
    route = get_route("nightly_cleanup")
    body = envelope(scheduled_message(route), message_id="m-once")
    assert push(client, body).json()["outcome"] == "ran"
    assert push(client, body).json()["outcome"] == "duplicate"
    assert TaskExecution.objects.filter(task_name="nightly_cleanup").count() == 1


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_through_the_emulator_a_firing_whose_id_another_topic_used_runs(
        settings, pubsub_emulator, live_server, emulator_push):
    from gyrinx_tasks import clients

    settings.TASKS_ENVIRONMENT = "life" + secrets.token_hex(4)
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    endpoint = f"{live_server.url}/tasks/pubsub/"
    route = get_route("nightly_cleanup")
    # A pull subscription first, so the message waits while another topic's run takes its id.
    subscription = emulator_push(route, endpoint, push_config={})
    message_id = subscription.publish(scheduled_message(route))
    # The emulator numbers message ids afresh on every start, and two topics can share one:
    # an old run of another task holds this id.
    TaskExecution.objects.create(task_name="add", task_path="tests.jobs.add",
                                 message_id=message_id, status=State.SUCCESSFUL)
    subscriber = clients.subscriber_client()
    try:
        subscriber.modify_push_config(subscription=subscription.subscription,
                                      push_config={"push_endpoint": endpoint})
    finally:
        subscriber.close()

    deadline = time.monotonic() + 60
    run = None
    while time.monotonic() < deadline:
        run = TaskExecution.objects.filter(task_name="nightly_cleanup",
                                           status=State.SUCCESSFUL).first()
        if run is not None:
            break
        time.sleep(0.2)
    assert run is not None, "the firing never ran: " + repr(list(
        TaskExecution.objects.values("task_name", "status", "message_id")))
    assert run.message_id == message_id


# --- 6. An enqueue still open is never taken as rolled back --------------------------------

def hold_open_enqueue(result_id: str):
    """Insert the run in a transaction of another connection and keep it open; returns
    (release, thread): release.set() commits it."""
    inserted, release = threading.Event(), threading.Event()

    def enqueue() -> None:
        try:
            with transaction.atomic():
                TaskExecution.objects.create(result_id=result_id, task_id=result_id,
                                             task_name="echo", task_path="tests.jobs.echo",
                                             args=["late"])
                inserted.set()
                release.wait(60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=enqueue)
    thread.start()
    assert inserted.wait(30)
    return release, thread


@pytest.mark.django_db(transaction=True)
def test_an_enqueue_still_open_past_the_grace_is_not_rejected_and_runs_once_committed(client):
    result_id = str(uuid.uuid4())
    body = envelope(echo_message(result_id, "late",
                                 enqueued_at=timezone.now() - timedelta(hours=2)),
                    attributes=RECORDED)
    release, thread = hold_open_enqueue(result_id)
    try:
        response = push(client, body)
    finally:
        release.set()
        thread.join(30)

    # Not acknowledged, whatever the database: PostgreSQL answers busy (the probe insert
    # waits for the open transaction); SQLite cannot even begin the claim while another
    # writer holds its lock (database_unavailable), which is not acknowledged either.
    assert response.status_code == 429, response.content
    if connection.vendor == "postgresql":
        assert response.json()["outcome"] == "busy"
        assert "still open" in response.json()["detail"]
    assert not TaskExecution.objects.filter(status=State.REJECTED).exists()
    ran = push(client, body)
    assert (ran.status_code, ran.json()["outcome"]) == (200, "ran"), ran.content
    assert TaskExecution.objects.get(result_id=result_id).status == State.SUCCESSFUL


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_enqueue_past_the_grace_is_rejected_and_its_id_stays_free(client):
    result_id = str(uuid.uuid4())
    with pytest.raises(RuntimeError), transaction.atomic():
        TaskExecution.objects.create(result_id=result_id, task_id=result_id, task_name="echo",
                                     task_path="tests.jobs.echo", args=["undone"])
        raise RuntimeError("the request failed after enqueue")
    body = envelope(echo_message(result_id, "undone",
                                 enqueued_at=timezone.now() - timedelta(hours=2)),
                    attributes=RECORDED)

    first, again = push(client, body), push(client, body)

    assert (first.status_code, first.json()["outcome"]) == (200, "rejected")
    assert "rolled back" in first.json()["detail"]
    assert again.status_code == 200 and again.json()["outcome"] in ("rejected", "duplicate")
    rejected = TaskExecution.objects.get()
    assert rejected.status == State.REJECTED and rejected.result_id != result_id


# --- 7. An outcome refused twice is not forgotten --------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_an_outcome_refused_twice_is_recorded_late_and_the_task_not_run_again(client):
    forget_unrecorded()
    jobs.CALLS.clear()
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.jobs.echo",
                                       args=["once"])
    body = envelope(echo_message(run.result_id, "once"), attributes=RECORDED)

    def refuse_success(execute, sql, params, many, context):
        # The database fails each write of the outcome (status SUCCESSFUL), nothing else.
        if sql.lstrip().upper().startswith("UPDATE") and "SUCCESSFUL" in map(str, params or ()):
            raise OperationalError("the database is away")
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(refuse_success):
            first = push(client, body)  # ran; its outcome refused
            second = push(client, body)  # the late record refused too
        assert first.json()["outcome"] == "unrecorded"
        assert second.status_code == 429
        # The ack deadline passes: elsewhere the task would run again; here it is known.
        TaskExecution.objects.filter(pk=run.pk).update(
            last_attempted_at=timezone.now() - timedelta(hours=1))
        third = push(client, body)
    finally:
        forget_unrecorded()

    assert (third.status_code, third.json()["outcome"]) == (200, "ran"), third.content
    assert jobs.CALLS == [(("once",), {})]
    run.refresh_from_db()
    assert run.status == State.SUCCESSFUL and run.attempts == 1
    assert any("recorded late" in entry.get("note", "") for entry in run.timeline)


# --- 8. The runs' table on another alias, with ATOMIC_REQUESTS -----------------------------

class RunsOnTheirOwnAlias:
    """Routes the package's tables to the "runs" alias (the same database, tests/settings)."""

    def _route(self, model, **hints):
        return "runs" if model in (TaskExecution, KillSwitch) else None

    db_for_read = db_for_write = _route


@pytest.mark.django_db(transaction=True, databases=["default", "runs"])
def test_with_atomic_requests_on_the_runs_alias_a_task_runs_outside_the_request_transaction(
        client, settings, monkeypatch, this_registry):
    settings.DATABASE_ROUTERS = [f"{__name__}.RunsOnTheirOwnAlias"]
    monkeypatch.setitem(connections.settings["runs"], "ATOMIC_REQUESTS", True)
    run = TaskExecution.objects.create(task_name="status_seen_from_outside",
                                       task_path=f"{__name__}.status_seen_from_outside")
    body = envelope({"task_id": run.result_id, "task_name": "status_seen_from_outside",
                     "args": [run.result_id], "kwargs": {},
                     "enqueued_at": timezone.now().isoformat()}, attributes=RECORDED)

    response = push(client, body)

    assert (response.status_code, response.json()["outcome"]) == (200, "ran"), response.content
    # Committed as it happened: another connection saw the run RUNNING while its task ran.
    assert TaskExecution.objects.get(pk=run.pk).return_value == {"status": "RUNNING"}


@pytest.mark.django_db(transaction=True, databases=["default", "runs"])
def test_publish_on_commit_waits_for_the_transaction_of_the_runs_alias(settings):
    settings.DATABASE_ROUTERS = [f"{__name__}.RunsOnTheirOwnAlias"]
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"],
        "OPTIONS": {**settings.TASKS["default"]["OPTIONS"], "publish_on_commit": True}}}
    publisher = FakePublisher()
    use_publisher(publisher)

    if connection.vendor == "postgresql":  # SQLite: one writer, so "default" would block
        with transaction.atomic(using="default"):
            jobs.add.enqueue(1, 2)  # the run is written on "runs", in autocommit: sent now
            assert len(publisher.published) == 1
    sent = len(publisher.published)
    with transaction.atomic(using="runs"):
        jobs.add.enqueue(3, 4)
        assert len(publisher.published) == sent  # waits for the commit of "runs"
    assert len(publisher.published) == sent + 1


# --- 13. get_result() returns the task as it was enqueued --------------------------------

@pytest.mark.django_db
def test_get_result_restores_the_queue_and_refreshes_through_the_backend_that_fetched_it(
        settings, monkeypatch):
    queues = ["default", "emails"]
    settings.TASKS = {
        **settings.TASKS,
        "default": {**settings.TASKS["default"], "QUEUES": queues},
        "other": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend", "QUEUES": queues,
                  "OPTIONS": {"project_id": "test-project"}},
    }
    use_publisher(FakePublisher())
    result = jobs.add.using(queue_name="emails").enqueue(1, 2)

    fetched = task_backends["default"].get_result(result.id)
    assert (fetched.task.queue_name, fetched.task.backend, fetched.backend) == (
        "emails", "default", "default")

    other = task_backends["other"].get_result(result.id)
    assert (other.task.queue_name, other.task.backend) == ("emails", "other")
    asked = []
    real = task_backends["other"].get_result
    monkeypatch.setattr(task_backends["other"], "get_result",
                        lambda result_id: asked.append(result_id) or real(result_id))
    TaskExecution.objects.filter(result_id=result.id).update(status=State.SUCCESSFUL,
                                                             return_value=3)
    other.refresh()
    assert asked == [result.id]
    assert other.return_value == 3


# --- 14. attempts is the true count, and the context's attempt -----------------------------

@pytest.mark.django_db
def test_attempts_are_the_true_count_past_the_kept_worker_ids():
    run = TaskExecution.objects.create(
        task_name="echo", task_path="tests.jobs.echo", status=State.FAILED, attempts=60,
        worker_ids=[f"w-{n}" for n in range(50)])

    assert jobs.echo.get_result(run.result_id).attempts == 60


@pytest.mark.django_db
def test_the_context_attempt_and_the_results_attempts_agree(client):
    run = TaskExecution.objects.create(task_name="report_attempt",
                                       task_path="tests.jobs.report_attempt")
    body = envelope({"task_id": run.result_id, "task_name": "report_attempt", "args": [],
                     "kwargs": {}, "enqueued_at": timezone.now().isoformat()},
                    delivery_attempt=5, attributes=RECORDED)

    assert push(client, body).status_code == 200

    fetched = jobs.report_attempt.get_result(run.result_id)
    assert fetched.return_value == 5  # the context's attempt: Pub/Sub's fifth delivery
    assert fetched.attempts == 5


# --- 15. @task(**options) on PubSubBackend --------------------------------------------------

@pytest.mark.django61  # @task(max_attempts=...) is Django 6.1's
@pytest.mark.django_db
def test_task_max_attempts_is_taken_and_gives_up(client, options_registry):
    from tests import task_options  # @task(max_attempts=2): a TypeError before

    task_options.CALLS.clear()
    assert task_options.fails_twice_at_most.max_attempts == 2
    message = {"task_id": "t-twice", "task_name": "fails_twice_at_most", "args": [],
               "kwargs": {}}

    first = push(client, envelope(message))
    second = push(client, envelope(message, delivery_attempt=2))
    third = push(client, envelope(message, delivery_attempt=3))

    assert [first.status_code, second.status_code, third.status_code] == [500, 200, 200]
    assert [r.json()["outcome"] for r in (first, second, third)] == [
        "failed", "gave_up", "duplicate"]
    run = TaskExecution.objects.get(result_id="t-twice")
    assert (run.status, run.gave_up, run.attempts) == (State.FAILED, True, 2)
    assert len(task_options.CALLS) == 2


@pytest.mark.django61  # @task(max_attempts=...) is Django 6.1's
@pytest.mark.django_db
def test_an_option_pubsub_backend_does_not_know_is_a_system_check_error(options_registry):
    from tests import task_options  # noqa: F401  (its tasks are what the check looks at)

    errors = [message for message in checks.run_checks(tags=["gyrinx_tasks"])
              if message.id == "gyrinx_tasks.E017"]

    assert [(error.obj, error.msg) for error in errors] == [(
        "tests.task_options.misspelt_option",
        "@task() was given option retries that PubSubBackend does not know.")]
    assert "max_attempts" in errors[0].hint and "TaskRoute" in errors[0].hint


# --- 12. A failed attempt that will be retried is not finished, to Django -------------------

@pytest.mark.django_db
def test_a_failed_attempt_that_will_retry_is_ready_to_django_and_keeps_its_error(client):
    run = TaskExecution.objects.create(task_name="explode", task_path="tests.tasks.explode")
    body = envelope({"task_id": run.result_id, "task_name": "explode", "args": ["kaput"],
                     "kwargs": {}}, attributes=RECORDED)

    assert push(client, body).status_code == 500  # Pub/Sub redelivers it

    result = jobs.explode.get_result(run.result_id)
    assert (str(result.status), result.is_finished) == ("READY", False)
    assert [error.exception_class_path for error in result.errors] == ["builtins.RuntimeError"]
    assert TaskExecution.objects.get(pk=run.pk).status == State.FAILED  # the admin's record


@pytest.mark.django_db
def test_a_run_given_up_or_never_delivered_is_failed_to_django():
    gave_up = TaskExecution.objects.create(
        task_name="explode", task_path="tests.tasks.explode", status=State.FAILED, attempts=3,
        message_id="m-3", gave_up=True)
    never_published = TaskExecution.objects.create(
        task_name="explode", task_path="tests.tasks.explode", status=State.FAILED)

    for run in (gave_up, never_published):
        result = jobs.explode.get_result(run.result_id)
        assert (str(result.status), result.is_finished) == ("FAILED", True)
