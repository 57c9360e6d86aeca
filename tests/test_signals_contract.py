"""Django's task signals, as tools that listen to them see a run (issue 16, behaviour 16).

Django's contract (django/tasks/backends/immediate.py shows it): task_enqueued when a task
is enqueued, task_started when it starts, and task_finished once, when the run has ended,
with its final status. Pub/Sub retries a failed attempt, so a run may start more than once;
it still ends once. Each kind of run is recorded here through PubSubBackend and the push
endpoint, and compared with ImmediateBackend running the same kind of task.
"""

import pytest
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from gyrinx_tasks.backend import PubSubBackend
from gyrinx_tasks.models import KillSwitch, SwitchMode, TaskExecution
from tests import tasks as jobs
from tests.helpers import envelope, push, task_message

pytestmark = pytest.mark.usefixtures("no_oidc")

RECORDED = {"gyrinx_recorded": "1"}


@pytest.fixture
def signals():
    """Every task signal sent while the test runs: (signal, result id, status, finished)."""
    seen: list[tuple[str, str, str, bool]] = []
    receivers = []
    for name, signal in (("enqueued", task_enqueued), ("started", task_started),
                         ("finished", task_finished)):
        def receiver(sender, task_result, name=name, **kwargs):
            seen.append((name, task_result.id, str(task_result.status),
                         task_result.is_finished))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def run_signals(seen, result_id):
    """The signals of one run, without its id: [(signal, status, is_finished), ...]."""
    return [(name, status, done) for name, rid, status, done in seen if rid == result_id]


def one_run(seen, result_id):
    """The run's signals with each retry's repeated task_started folded into one: what a
    backend that never retries (ImmediateBackend) sends for the attempt that ends it."""
    folded = []
    for item in run_signals(seen, result_id):
        if folded and item[0] == "started" and folded[-1][0] == "started":
            continue
        folded.append(item)
    return folded


def deliver(client, result, attempt=None):
    message = {"task_id": result.id, "task_name": result.task.name, "args": result.args,
               "kwargs": result.kwargs, "enqueued_at": timezone.now().isoformat()}
    return push(client, envelope(message, message_id=f"m-{result.id}",
                                 delivery_attempt=attempt, attributes=RECORDED))


SUCCEEDED = [("enqueued", "READY", False), ("started", "RUNNING", False),
             ("finished", "SUCCESSFUL", True)]
FAILED = [("enqueued", "READY", False), ("started", "RUNNING", False),
          ("finished", "FAILED", True)]


@pytest.mark.django_db
def test_immediate_backend_the_reference(signals):
    ok, failed = jobs.immediate_add.enqueue(1, 2), jobs.immediate_explode.enqueue()
    assert run_signals(signals, ok.id) == SUCCEEDED
    assert run_signals(signals, failed.id) == FAILED


@pytest.mark.django_db
def test_a_run_that_succeeds_sends_what_immediate_backend_sends(client, fake_publisher,
                                                                 signals):
    result = jobs.echo.enqueue("hi")
    assert deliver(client, result).status_code == 200
    assert deliver(client, result).json()["outcome"] == "duplicate"  # nothing more

    reference = jobs.immediate_add.enqueue(1, 2)
    assert run_signals(signals, result.id) == run_signals(signals, reference.id) == SUCCEEDED


@pytest.mark.django_db
def test_a_run_that_fails_then_succeeds_finishes_once_successful(client, fake_publisher,
                                                                  signals):
    result = jobs.flaky.enqueue("k")
    assert deliver(client, result, attempt=1).status_code == 500  # Pub/Sub retries
    assert deliver(client, result, attempt=2).status_code == 200

    assert run_signals(signals, result.id) == [
        ("enqueued", "READY", False), ("started", "RUNNING", False),
        ("started", "RUNNING", False), ("finished", "SUCCESSFUL", True)]
    reference = jobs.immediate_add.enqueue(1, 2)
    assert one_run(signals, result.id) == run_signals(signals, reference.id)


@pytest.mark.django61  # @task(max_attempts=...) is Django 6.1's
@pytest.mark.django_db
def test_a_run_that_gives_up_finishes_once_failed(client, fake_publisher, signals,
                                                  options_registry):
    from tests import task_options

    result = task_options.fails_twice_at_most.enqueue()
    assert deliver(client, result, attempt=1).status_code == 500
    assert deliver(client, result, attempt=2).json()["outcome"] == "gave_up"
    assert deliver(client, result, attempt=3).json()["outcome"] == "duplicate"

    reference = jobs.immediate_explode.enqueue()
    assert [name for name, *_ in run_signals(signals, result.id)].count("finished") == 1
    assert one_run(signals, result.id) == run_signals(signals, reference.id) == FAILED


@pytest.mark.django_db
def test_a_run_skipped_by_the_kill_switch_finishes_once_failed(client, fake_publisher,
                                                                signals):
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.SKIP,
                              reason="incident")
    result = jobs.echo.enqueue("hi")
    assert deliver(client, result).json()["outcome"] == "skipped"
    assert deliver(client, result).json()["outcome"] == "duplicate"

    # Never started: Django's FAILED is "raised an exception, or was unable to start".
    assert run_signals(signals, result.id) == [
        ("enqueued", "READY", False), ("finished", "FAILED", True)]


@pytest.mark.django_db
def test_a_held_run_sends_nothing_until_it_runs(client, fake_publisher, signals):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.HOLD,
                                       reason="incident")
    result = jobs.echo.enqueue("hi")
    assert deliver(client, result).json()["outcome"] == "held"
    assert run_signals(signals, result.id) == [("enqueued", "READY", False)]

    switch.enabled = True
    switch.save()
    assert deliver(client, result).json()["outcome"] == "ran"
    assert run_signals(signals, result.id) == SUCCEEDED


@pytest.mark.django_db
def test_a_rejected_run_finishes_once_failed(client, signals):
    # Another producer's message whose arguments do not fit the task.
    body = envelope({"task_id": "t-misfit", "task_name": "add", "args": ["only one"],
                     "kwargs": {}})
    assert push(client, body).json()["outcome"] == "rejected"
    assert push(client, body).json()["outcome"] in ("rejected", "duplicate")

    run = TaskExecution.objects.get(result_id="t-misfit")
    assert run_signals(signals, run.result_id) == [("finished", "FAILED", True)]


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# handle_delivery: receivers connected for the backend's class (Django's documented way to
# listen to one backend) get task_started and task_finished.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("calls", "fresh_unrecorded")
def test_task_signals_are_sent_by_the_backend_class(client):
    seen = []

    def started(sender, task_result, **kwargs):
        seen.append(("started", task_result.status))

    def finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.status))

    task_started.connect(started, sender=PubSubBackend, weak=False)
    task_finished.connect(finished, sender=PubSubBackend, weak=False)
    try:
        push(client, envelope(task_message()))
        push(client, envelope(task_message(task_id="t-2", task_name="explode", args=[]),
                              message_id="m-2"))
    finally:
        task_started.disconnect(started, sender=PubSubBackend)
        task_finished.disconnect(finished, sender=PubSubBackend)
    # explode's failed attempt will be retried: the run has not ended, so no task_finished
    # (issue 16; this expected a ("finished", "FAILED") last before).
    assert seen == [("started", "RUNNING"), ("finished", "SUCCESSFUL"),
                    ("started", "RUNNING")]


class MyPubSubBackend(PubSubBackend):
    """A project's own subclass of the backend, configured in TASKS."""


# handle_delivery mutants 92, 94: with a subclass of PubSubBackend configured, the signals'
# sender is that class, so receivers connected for it (Django's way to listen to one
# backend class) hear the runs of the push endpoint.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("calls", "fresh_unrecorded")
def test_task_signals_are_sent_by_a_configured_subclass(client, monkeypatch):
    from django.tasks import task_backends

    monkeypatch.setattr(task_backends["default"], "__class__", MyPubSubBackend)
    seen = []

    def finished(sender, task_result, **kwargs):
        seen.append((sender, task_result.status))

    task_finished.connect(finished, sender=MyPubSubBackend, weak=False)
    try:
        push(client, envelope(task_message()))
    finally:
        task_finished.disconnect(finished, sender=MyPubSubBackend)
    assert seen == [(MyPubSubBackend, "SUCCESSFUL")]


# --- A failed attempt Pub/Sub will retry has not ended the run ---


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
