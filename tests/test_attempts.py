"""Attempt limits, bounded history, publish timeouts and start-up (issue 9, items 1 and 2)."""

import logging
import threading

import pytest
from django.core import checks
from django.core.signals import request_started
from django.utils import timezone

from gyrinx_tasks import TaskRoute, registry, startup
from gyrinx_tasks.exceptions import TaskPublishError
from gyrinx_tasks.models import (
    HISTORY_HEAD,
    HISTORY_TAIL,
    PUBLISH_UNCONFIRMED,
    KillSwitch,
    State,
    TaskExecution,
)
from gyrinx_tasks.views import ACK
from tests import tasks as jobs
from tests.helpers import (
    FakePublisher,
    envelope,
    package_log_lines,
    stuck_echo_run,
    task_message,
    use_publisher,
)
from tests.registry import tasks as GOOD_ROUTES

pytestmark = [pytest.mark.clock, pytest.mark.usefixtures("no_oidc")]

URL = "/tasks/pubsub/"

# This module is also a registry (TASKS_REGISTRY = "tests.test_attempts"): the good routes,
# with explode and echo limited to two attempts.
tasks = [
    *(route for route in GOOD_ROUTES if route.name not in ("explode", "echo")),
    TaskRoute(jobs.explode, max_attempts=2),
    TaskRoute(jobs.echo, max_attempts=2),
]


@pytest.fixture
def limited(settings):
    registry.clear_cache()
    settings.TASKS_REGISTRY = __name__
    yield
    registry.clear_cache()


def push(client, body: bytes):
    return client.post(URL, body, content_type="application/json")


def message(task_name: str, task_id: str = "t-1", args=None) -> dict:
    return {"task_id": task_id, "task_name": task_name, "args": args or [], "kwargs": {},
            "enqueued_at": timezone.now().isoformat()}


@pytest.mark.django_db
def test_a_run_is_given_up_after_max_attempts_and_acknowledged(client, limited):
    body = envelope(message("explode"))
    assert push(client, body).status_code == 500  # attempt 1: will retry

    response = push(client, body)  # attempt 2 of 2

    assert (response.status_code, response.json()["outcome"]) == (200, "gave_up")
    run = TaskExecution.objects.get()
    assert (run.status, run.gave_up, run.attempts) == (State.FAILED, True, 2)
    assert run.status_detail.startswith("Gave up after 2 attempts")
    assert [e["attempt"] for e in run.errors] == [1, 2]
    # A redelivery already on its way changes nothing.
    again = push(client, body)
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    run.refresh_from_db()
    assert run.attempts == 2


@pytest.mark.django_db
def test_pubsubs_delivery_attempt_counts_when_it_is_past_the_limit(client, limited):
    jobs.CALLS.clear()
    # With a dead-letter policy Pub/Sub numbers the deliveries; the 3rd is past 2 attempts.
    response = push(client, envelope(message("echo", args=["x"]), delivery_attempt=3))

    assert (response.status_code, response.json()["outcome"]) == (200, "gave_up")
    assert jobs.CALLS == []
    run = TaskExecution.objects.get()
    assert (run.status, run.gave_up) == (State.FAILED, True)


@pytest.mark.django_db
def test_without_a_limit_failures_keep_being_retried(client):
    body = envelope(message("explode"))
    for _ in range(3):
        assert push(client, body).status_code == 500
    run = TaskExecution.objects.get()
    assert (run.status, run.gave_up, run.attempts) == (State.FAILED, False, 3)


@pytest.mark.django_db
def test_the_admin_tells_gave_up_from_will_retry(admin_client, client, limited):
    push(client, envelope(message("explode", task_id="t-a")))
    retrying = TaskExecution.objects.get(result_id="t-a")
    push(client, envelope(message("explode", task_id="t-b"), message_id="m-b"))
    push(client, envelope(message("explode", task_id="t-b"), message_id="m-b"))
    given_up = TaskExecution.objects.get(result_id="t-b")

    url = "/admin/gyrinx_tasks/taskexecution/{}/change/"
    retrying_page = admin_client.get(url.format(retrying.pk)).content.decode()
    given_up_page = admin_client.get(url.format(given_up.pk)).content.decode()

    assert "will retry" in retrying_page and "Gave up" not in retrying_page
    assert "Gave up after 2 attempts" in given_up_page and "will retry" not in given_up_page


def test_w015_max_attempts_that_disagree_with_the_dead_letter_policy(settings):
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.check_registries.max_attempts"
    try:
        found = [m for m in checks.run_checks(databases=[])
                 if (m.id or "").startswith("gyrinx_tasks.")]
    finally:
        registry.clear_cache()

    assert sorted((m.id, m.obj) for m in found) == [
        ("gyrinx_tasks.W015", "tests.tasks.add"), ("gyrinx_tasks.W015", "tests.tasks.echo")]
    by_obj = {m.obj: m.msg for m in found}
    assert "nothing reaches the dead-letter topic" in by_obj["tests.tasks.add"]
    assert "never recorded as given up" in by_obj["tests.tasks.echo"]


# Unbounded rows: a week of redeliveries would add about a thousand entries to each list.
@pytest.mark.django_db
def test_errors_and_timeline_keep_the_first_and_the_last_entries_and_count_the_rest():
    run = TaskExecution.objects.create(task_name="explode", task_path="tests.tasks.explode")
    for attempt in range(1, 101):
        run.start("w", attempt)
        run.fail("builtins.RuntimeError", f"attempt {attempt}")
    run.save()
    run.refresh_from_db()

    kept = HISTORY_HEAD + HISTORY_TAIL
    assert (run.attempts, len(run.errors), run.errors_omitted) == (100, kept, 100 - kept)
    assert [e["attempt"] for e in run.errors] == (
        list(range(1, HISTORY_HEAD + 1)) + list(range(100 - HISTORY_TAIL + 1, 101)))
    # 2 entries per attempt (the row was created without one).
    assert (len(run.timeline), run.timeline_omitted) == (kept, 200 - kept)
    assert run.timeline[-1]["note"] == "attempt 100: builtins.RuntimeError"
    assert len(run.worker_ids) == kept


@pytest.mark.django_db
def test_the_admin_says_how_many_entries_are_not_shown(admin_client):
    run = TaskExecution.objects.create(task_name="explode", task_path="tests.tasks.explode")
    for attempt in range(1, 61):
        run.start("w", attempt)
        run.fail("builtins.RuntimeError", f"attempt {attempt}")
    run.save()

    page = admin_client.get(f"/admin/gyrinx_tasks/taskexecution/{run.pk}/change/")

    text = page.content.decode()
    assert f"{run.timeline_omitted} earlier entries not shown" in text
    assert f"{run.errors_omitted} errors not shown" in text


# Publish timeout: the message may still arrive, so the run is not "never delivered".
@pytest.mark.django_db
def test_a_publish_that_times_out_is_unconfirmed_and_the_delivery_reconciles_it(client):
    use_publisher(FakePublisher(error=TimeoutError("no answer within publish_timeout")))
    try:
        with pytest.raises(TaskPublishError, match="publish unconfirmed"):
            jobs.add.enqueue(1, 2)
    finally:
        from django.tasks import task_backends

        task_backends["default"].__dict__.pop("publisher", None)
    run = TaskExecution.objects.get()
    assert (run.status, run.status_detail) == (State.READY, PUBLISH_UNCONFIRMED)
    assert run.errors[0]["exception_class_path"] == "builtins.TimeoutError"

    # Pub/Sub had it after all, and delivers it.
    response = push(client, envelope(message("add", task_id=run.result_id, args=[1, 2])))

    assert response.status_code == 200
    run.refresh_from_db()
    assert (run.status, run.return_value, run.status_detail) == (State.SUCCESSFUL, 3, "")


@pytest.mark.django_db
def test_a_refused_publish_is_still_failed(fake_publisher):
    from google.api_core.exceptions import NotFound

    fake_publisher.error = NotFound("topic not found")
    with pytest.raises(TaskPublishError, match="recorded as FAILED"):
        jobs.add.enqueue(1, 2)
    assert TaskExecution.objects.get().status == State.FAILED


# Start-up: provisioning waits for the first request, so management commands never start it.
@pytest.mark.django_db  # request_started also runs Django's close_old_connections
def test_startup_provisioning_starts_with_the_first_request_only(monkeypatch):
    started = []
    monkeypatch.setattr(startup, "skip_reason", lambda: "")
    monkeypatch.setattr(startup, "start_in_background", lambda: started.append(1))
    monkeypatch.setattr(startup, "_started", threading.Lock())
    try:
        startup.maybe_provision_on_startup()
        assert started == []  # loading the apps (any management command) starts nothing

        request_started.send(sender=None)
        request_started.send(sender=None)
    finally:
        request_started.disconnect(dispatch_uid="gyrinx_tasks.provision_on_startup")

    assert started == [1]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_run_page_of_a_given_up_run_in_a_browser(admin_page, live_server):
    from tests.infra.browser import save_screenshot

    run = TaskExecution.objects.create(task_name="explode", task_path="tests.tasks.explode",
                                       message_id="m-browser", args=["kaboom"])
    for attempt in range(1, 61):
        run.start("rev-00042/instance-7", attempt)
        run.fail("builtins.RuntimeError", "Traceback (most recent call last):\n"
                 f"RuntimeError: kaboom (attempt {attempt})")
    run.give_up("Gave up after 60 attempts (the route's max_attempts is 60); Pub/Sub is not "
                "asked to deliver it again. Retry it from the admin once the cause is fixed.")
    run.save()

    admin_page.goto(f"{live_server.url}/admin/gyrinx_tasks/taskexecution/{run.pk}/change/")

    state = admin_page.locator(".gyrinx-retry-state")
    assert state.inner_text().startswith("Gave up after 60 attempts")
    gap = admin_page.locator(".gyrinx-timeline tr.gyrinx-omitted")
    assert gap.inner_text().startswith(f"{run.timeline_omitted} earlier entries not shown")
    # The gap sits after the first kept entries.
    rows = admin_page.locator(".gyrinx-timeline tbody tr")
    assert "gyrinx-omitted" in (rows.nth(HISTORY_HEAD).get_attribute("class") or "")
    save_screenshot(admin_page, "run-gave-up")
    save_screenshot(admin_page, "run-gave-up", dark=True)


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _decide mutants 112, 117: the route's last allowed attempt runs (2 of 2); only a delivery
# past it gives up.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("calls", "fresh_unrecorded")
def test_the_last_allowed_attempt_runs(client, limited, calls):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"], status=State.FAILED, attempts=1)
    response = push(client, envelope(task_message(task_id=run.result_id)))
    assert response.json()["outcome"] == "ran"
    assert TaskExecution.objects.get().attempts == 2 and len(calls) == 1


# _decide mutants 111, 159-187: a run that has had its attempts (the limit was lowered, or
# its failure was recorded before the limit existed) gives up on the next delivery without
# running it: FAILED for good, said in the answer, the run and the log.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("calls", "fresh_unrecorded")
def test_a_run_out_of_attempts_gives_up_on_its_next_delivery(client, limited, calls, caplog):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"], status=State.FAILED, attempts=2)
    with caplog.at_level(logging.INFO, logger="gyrinx_tasks"):
        response = push(client, envelope(task_message(task_id=run.result_id)))

    reason = ("Gave up after 2 attempts (the route's max_attempts is 2); Pub/Sub is not asked "
              "to deliver it again. Retry it from the admin once the cause is fixed.")
    assert (response.status_code, response.json()) == (ACK, {
        "outcome": "gave_up", "detail": reason, "result_id": run.result_id, "status": "FAILED"})
    stored = TaskExecution.objects.get()
    assert (stored.gave_up, stored.status_detail, stored.attempts) == (True, reason, 2)
    assert package_log_lines(caplog) == [f"Gave up echo ({run.result_id}): {reason}"]
    assert calls == []


# _decide mutants 118-134: a run stuck RUNNING whose worker stopped is not run again when its
# limit is reached or its switch is off: the lost attempt is recorded as a timeout saying
# why it is not run again.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("calls", "fresh_unrecorded")
@pytest.mark.parametrize("why", ["limit", "switch"])
def test_a_stuck_attempt_not_run_again_is_recorded_as_a_timeout(client, limited, calls, why):
    run = stuck_echo_run(attempts=2 if why == "limit" else 1)
    if why == "switch":
        KillSwitch.objects.create(task_name="echo", enabled=False)

    outcome = push(client, envelope(task_message(task_id=run.result_id))).json()["outcome"]

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
