"""Cancel a READY run (issue 19, item 3): from Python, the run's page, a selection and every run
matching a filter; its delivery is acknowledged unrun; Django's TaskResult shows it FAILED with
the reason; audited; a RUNNING run cannot be cancelled and the page says why.

The race with a delivery claiming the run is tried on SQLite and PostgreSQL
(GYRINX_TEST_DB=postgres), and the whole path through the Pub/Sub emulator.
"""

import threading
import time

import pytest
from django.contrib.admin.models import LogEntry
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_finished
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import gyrinx_tasks
from gyrinx_tasks import cancellation, claim
from gyrinx_tasks.claim import CANCELLED_ACK_NOTE
from gyrinx_tasks.exceptions import TaskCancelled
from gyrinx_tasks.models import CANCELLED_ERROR, KillSwitch, State, SwitchMode, TaskExecution
from gyrinx_tasks.outcomes import OutcomeKind
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.runner import handle_delivery
from gyrinx_tasks.views import STATUS_FOR
from tests import tasks
from tests.helpers import envelope, in_thread, make_run, push, staff_user

pytestmark = pytest.mark.usefixtures("no_oidc")

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"
CANCEL_PERMS = ("view_taskexecution", "cancel_taskexecution")
RECORDED = {"gyrinx_recorded": "1"}
WAIT = 30  # seconds any one thread may take before the test fails instead of hanging


@pytest.fixture
def finished():
    """The result ids Django's task_finished was sent for, in order."""
    seen: list[tuple[str, str]] = []

    def receiver(sender, task_result, **kwargs):
        seen.append((task_result.id, str(task_result.status)))

    task_finished.connect(receiver, weak=False)
    yield seen
    task_finished.disconnect(receiver)


def message_of(run) -> bytes:
    """The push body Pub/Sub delivers for an enqueued run of ours."""
    payload = {
        "task_id": run.result_id,
        "task_name": run.task_name,
        "args": run.args,
        "kwargs": run.kwargs,
        "enqueued_at": timezone.now().isoformat(),
    }
    return envelope(payload, message_id=f"m-{run.result_id[:8]}", attributes=RECORDED)


def ready_echo(*args):
    return make_run("echo", args=list(args))


# --- Python: gyrinx_tasks.cancel() -----------------------------------------------------------


@pytest.mark.django_db
def test_cancel_a_ready_run_from_python_and_get_result_says_failed_with_the_reason(
    fake_publisher, finished
):
    result = tasks.echo.enqueue("never")

    done = gyrinx_tasks.cancel(result.id, by="billing-cleanup")

    assert (done.cancelled, done.status, done.result_id) == (True, State.CANCELLED, result.id)
    assert "Cancelled by billing-cleanup before it started" in done.detail
    run = TaskExecution.objects.get(result_id=result.id)
    assert (run.status, run.attempts, run.status_detail) == (State.CANCELLED, 0, done.detail)
    assert run.finished_at is not None
    assert [(e["from"], e["to"]) for e in run.timeline][-1] == (State.READY, State.CANCELLED)
    # Django's TaskResult: final FAILED (Django has no cancelled status), the reason in errors.
    fetched = task_backends["default"].get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert fetched.is_finished
    [error] = fetched.errors
    assert error.exception_class_path == CANCELLED_ERROR == "gyrinx_tasks.exceptions.TaskCancelled"
    assert "Cancelled by billing-cleanup" in error.traceback
    assert error.exception_class is TaskCancelled  # Django resolves it: a real class
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    # The run ended now: Django's task_finished, once.
    assert finished == [(result.id, "FAILED")]


@pytest.mark.django_db
def test_cancel_takes_a_task_result_and_says_code_when_no_one_is_named(fake_publisher):
    result = tasks.echo.enqueue("x")
    done = gyrinx_tasks.cancel(result)
    assert done.cancelled
    assert "Cancelled by code before it started" in done.detail


@pytest.mark.django_db
def test_cancel_of_an_unknown_id_is_a_clear_error():
    with pytest.raises(TaskResultDoesNotExist, match="No task run has the result id 'nope'"):
        gyrinx_tasks.cancel("nope")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "fields", "says"),
    [
        (State.RUNNING, {"attempts": 1}, "The run is running: its task has started"),
        (State.FAILED, {"attempts": 1, "message_id": "m-1"}, "Pub/Sub will deliver it again"),
        (State.SUCCESSFUL, {}, "The run is successful: it has already ended"),
        (State.SKIPPED, {}, "The run is skipped: it has already ended"),
        (State.CANCELLED, {}, "The run is cancelled: it has already ended"),
    ],
)
def test_a_run_that_is_not_ready_is_not_cancelled_and_the_answer_says_why(
    status, fields, says, finished
):
    run = make_run("echo", status, **fields)
    before = TaskExecution.objects.values().get(pk=run.pk)

    done = gyrinx_tasks.cancel(run.result_id)

    assert (done.cancelled, done.status) == (False, status)
    assert says in done.detail
    assert TaskExecution.objects.values().get(pk=run.pk) == before
    assert finished == []


@pytest.mark.django_db
def test_a_run_of_another_backend_is_only_a_record_and_is_not_cancelled():
    run = make_run("immediate_add", backend="immediate")
    done = gyrinx_tasks.cancel(run.result_id)
    assert not done.cancelled
    assert "not to a PubSubBackend" in done.detail
    assert TaskExecution.objects.get(pk=run.pk).status == State.READY


@pytest.mark.django_db
def test_a_cancelled_retry_no_longer_stands_for_its_original(fake_publisher):
    original = make_run("echo", State.FAILED, gave_up=True)
    retry = make_run("echo", retry_of=original)
    assert TaskExecution.objects.without_live_retry().filter(pk=original.pk).count() == 0
    assert gyrinx_tasks.cancel(retry.result_id).cancelled
    assert TaskExecution.objects.without_live_retry().filter(pk=original.pk).count() == 1


# --- The delivery of a cancelled run ---------------------------------------------------------


@pytest.mark.django_db
def test_the_delivery_of_a_cancelled_run_is_acknowledged_unrun_and_noted_once(client, calls):
    run = ready_echo("never")
    assert gyrinx_tasks.cancel(run.result_id, by="ops").cancelled
    assert STATUS_FOR[OutcomeKind.CANCELLED] == 200

    response = push(client, message_of(run))

    assert response.status_code == 200
    body = response.json()
    assert (body["outcome"], body["status"]) == ("cancelled", State.CANCELLED)
    assert "Cancelled by ops" in body["detail"]
    assert calls == []  # the task never ran
    run.refresh_from_db()
    assert (run.status, run.attempts) == (State.CANCELLED, 0)
    notes = [entry.get("note", "") for entry in run.timeline]
    assert notes[-1] == f"{CANCELLED_ACK_NOTE} (message m-{run.result_id[:8]})"

    # Pub/Sub may deliver it again (at-least-once): acknowledged again, noted no second time.
    again = push(client, message_of(run))
    assert (again.status_code, again.json()["outcome"]) == (200, "cancelled")
    run.refresh_from_db()
    assert (
        sum(
            CANCELLED_ACK_NOTE in note for note in [entry.get("note", "") for entry in run.timeline]
        )
        == 1
    )
    assert calls == []


@pytest.mark.django_db
def test_a_held_run_can_be_cancelled_and_its_next_delivery_is_acknowledged(client, calls):
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.HOLD)
    run = ready_echo("held")
    assert push(client, message_of(run)).status_code == 429  # held: Pub/Sub keeps it
    assert gyrinx_tasks.cancel(run.result_id).cancelled
    # Still switched off: the cancelled run's delivery is acknowledged all the same.
    response = push(client, message_of(run))
    assert (response.status_code, response.json()["outcome"]) == (200, "cancelled")
    assert calls == []


# --- Races: cancel against a delivery claiming the run ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_cancel_between_a_claims_read_and_its_write_wins_and_the_task_never_runs(
    monkeypatch, calls
):
    """The claim has read the run READY; the cancel commits; the claim's conditional write
    changes no row, it decides again under the lock and acknowledges the delivery unrun."""
    run = ready_echo("raced")
    delivery = parse_envelope(message_of(run))
    real_read = claim.read_run
    cancelled: list = []

    def read_then_cancel(*args, **kwargs):
        found = real_read(*args, **kwargs)
        if not cancelled:  # only the first, unlocked read
            thread, results = in_thread(gyrinx_tasks.cancel, run.result_id)
            thread.join(WAIT)
            cancelled.extend(results)
        return found

    monkeypatch.setattr(claim, "read_run", read_then_cancel)
    outcome = handle_delivery(delivery, "raw")

    [done] = cancelled
    assert done.cancelled
    assert outcome.kind == OutcomeKind.CANCELLED
    assert calls == []
    run.refresh_from_db()
    assert (run.status, run.attempts) == (State.CANCELLED, 0)


@pytest.mark.django_db(transaction=True)
def test_a_claim_between_a_cancels_read_and_its_write_wins_and_the_page_says_running(monkeypatch):
    """The cancel has read the run READY; a delivery starts it; the cancel's conditional
    write changes no row, it reads the run again and refuses: RUNNING."""
    started = threading.Event()
    release = threading.Event()

    class Held(list):
        def append(self, item):
            super().append(item)
            started.set()
            assert release.wait(WAIT)

    monkeypatch.setattr(tasks, "CALLS", Held())
    run = ready_echo("first")
    stale = TaskExecution.objects.get(pk=run.pk)  # what the cancel read
    thread, results = in_thread(handle_delivery, parse_envelope(message_of(run)), "raw")
    try:
        assert started.wait(WAIT)
        done = cancellation.cancel_run(stale, "ops")
    finally:
        release.set()
        thread.join(WAIT)

    assert (done.cancelled, done.status) == (False, State.RUNNING)
    assert "a task that has started cannot be stopped" in done.detail
    [outcome] = results
    assert outcome.kind == OutcomeKind.RAN
    assert TaskExecution.objects.get(pk=run.pk).status == State.SUCCESSFUL


@pytest.mark.django_db(transaction=True)
def test_cancel_and_delivery_at_the_same_moment_exactly_one_wins(monkeypatch):
    """Many times over: a cancel and a delivery of one READY run let go at once, each on its
    own connection. Either the cancel wins (CANCELLED, the delivery acknowledged unrun, the
    task never ran) or the claim does (the task ran once, the cancel refused) — never both,
    never neither."""
    ran: list = []
    monkeypatch.setattr(tasks, "CALLS", ran)
    wins = {"cancel": 0, "delivery": 0}
    for i in range(20):
        run = ready_echo(f"race-{i}")
        body = message_of(run)
        barrier = threading.Barrier(2)

        def deliver(body=body, barrier=barrier):
            barrier.wait(WAIT)
            return handle_delivery(parse_envelope(body), "raw")

        def cancel(run=run, barrier=barrier):
            barrier.wait(WAIT)
            return gyrinx_tasks.cancel(run.result_id)

        (t1, delivered), (t2, cancelled) = in_thread(deliver), in_thread(cancel)
        t1.join(WAIT)
        t2.join(WAIT)
        [outcome], [done] = delivered, cancelled
        assert not isinstance(outcome, BaseException), outcome
        assert not isinstance(done, BaseException), done
        for _ in range(50):  # busy: the cancel held the row for an instant; Pub/Sub retries
            if outcome.kind != OutcomeKind.BUSY:
                break
            time.sleep(0.05)
            outcome = handle_delivery(parse_envelope(body), "raw")
        final = TaskExecution.objects.get(pk=run.pk)
        ran_here = [args for args, _kwargs in ran if args == (f"race-{i}",)]
        if done.cancelled:
            wins["cancel"] += 1
            assert outcome.kind == OutcomeKind.CANCELLED
            assert ran_here == []
            assert (final.status, final.attempts) == (State.CANCELLED, 0)
        else:
            wins["delivery"] += 1
            assert outcome.kind == OutcomeKind.RAN
            assert len(ran_here) == 1
            assert final.status == State.SUCCESSFUL
            assert done.status in (State.RUNNING, State.SUCCESSFUL)
    assert sum(wins.values()) == 20


# --- The admin: permission, the run's page, a selection, select-across, audit ----------------


def change_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])


def cancel_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_cancel", args=[run.pk])


def action_post(client, runs, query="", **extra):
    data = {
        "action": "cancel_selected",
        "index": "0",
        "_selected_action": [str(run.pk) for run in runs],
        **extra,
    }
    return client.post(reverse(CHANGELIST) + query, data)


def action_messages(client, runs, query="", **extra) -> str:
    """The action's outcome as the list it redirects to shows it."""
    response = action_post(client, runs, query, **extra)
    assert response.status_code == 302, response.content.decode()[:300]
    return client.get(response["Location"]).content.decode()


@pytest.fixture
def canceller(client):
    user = staff_user("canceller", *CANCEL_PERMS)
    client.force_login(user)
    client.user = user
    return client


@pytest.mark.django_db
def test_without_the_permission_no_button_no_action_and_a_forged_post_is_refused(client):
    client.force_login(staff_user("viewer", "view_taskexecution", "retry_taskexecution"))
    run = ready_echo()
    page = client.get(change_url(run)).content.decode()
    assert "gyrinx-cancel" not in page
    assert "cancel_selected" not in client.get(reverse(CHANGELIST)).content.decode()
    assert client.post(cancel_url(run)).status_code == 403
    assert client.post(cancel_url(run), HTTP_HX_REQUEST="true").status_code == 403
    assert action_post(client, [run]).status_code == 403
    assert action_post(client, [run], select_across="1", confirm="yes").status_code == 403
    assert TaskExecution.objects.get(pk=run.pk).status == State.READY
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_a_ready_run_of_another_backend_has_no_cancel_button_but_the_reason(canceller):
    run = make_run("immediate_add", backend="immediate")
    page = canceller.get(change_url(run)).content.decode()
    assert "gyrinx-cancel-button" not in page
    assert "not to a PubSubBackend" in page


@pytest.mark.django_db
def test_the_button_on_a_ready_runs_page_cancels_it_in_place_and_audits(canceller, finished):
    run = ready_echo()
    page = canceller.get(change_url(run)).content.decode()
    assert "gyrinx-cancel-button" in page
    assert canceller.get(cancel_url(run)).status_code == 405  # only POST changes anything

    response = canceller.post(cancel_url(run), HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    fragment = response.content.decode()
    assert 'id="gyrinx-cancel"' in fragment and "<html" not in fragment
    assert "Cancelled by canceller before it started" in fragment
    assert "gyrinx-cancel-button" not in fragment
    run.refresh_from_db()
    assert run.status == State.CANCELLED
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id) == (canceller.user, str(run.pk))
    assert entry.change_message == "Cancelled before it started: the task will not run."
    assert [rid for rid, _status in finished] == [run.result_id]
    # The page of the cancelled run: no button; the reason as its error, before any attempt.
    page = canceller.get(change_url(run)).content.decode()
    assert "gyrinx-cancel-button" not in page
    assert "Before any attempt:" in page
    assert "<code>gyrinx_tasks.exceptions.TaskCancelled</code>" in page


@pytest.mark.django_db
def test_a_plain_post_redirects_to_the_run_with_a_message(canceller):
    run = ready_echo()
    response = canceller.post(cancel_url(run), follow=True)
    assert response.redirect_chain[-1][0] == change_url(run)
    assert "Cancelled: the task will not run." in response.content.decode()
    assert TaskExecution.objects.get(pk=run.pk).status == State.CANCELLED


@pytest.mark.django_db
def test_a_running_runs_page_says_why_it_cannot_be_cancelled(canceller):
    run = make_run("echo", State.RUNNING, attempts=1)
    page = canceller.get(change_url(run)).content.decode()
    assert "gyrinx-cancel-button" not in page
    assert "Cannot be cancelled." in page
    assert "a task that has started cannot be stopped from here" in page
    # A post anyway (a stale page): refused with the sentence, nothing changed or audited.
    fragment = canceller.post(cancel_url(run), HTTP_HX_REQUEST="true").content.decode()
    assert "gyrinx-cancel-error" in fragment
    assert "The run is running" in fragment
    assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_ended_runs_pages_show_no_cancel_panel(canceller):
    for status in (State.SUCCESSFUL, State.FAILED, State.CANCELLED):
        page = canceller.get(change_url(make_run("echo", status))).content.decode()
        assert 'id="gyrinx-cancel"' not in page


@pytest.mark.django_db
def test_cancel_a_selection_skips_what_is_not_ready_and_says_how_many(canceller, finished):
    ready = [ready_echo(i) for i in range(3)]
    running = make_run("echo", State.RUNNING, attempts=1)
    done = make_run("echo", State.SUCCESSFUL)

    text = action_messages(canceller, [*ready, running, done])
    assert "Cancelled 3 runs: their tasks will not run." in text
    assert (
        "1 selected runs were running and were left alone: a task that has started "
        "cannot be stopped." in text
    )
    assert "1 selected runs were not ready" in text
    statuses = dict(TaskExecution.objects.values_list("pk", "status"))
    assert [statuses[run.pk] for run in ready] == [State.CANCELLED] * 3
    assert (statuses[running.pk], statuses[done.pk]) == (State.RUNNING, State.SUCCESSFUL)
    logged = LogEntry.objects.filter(user=canceller.user)
    assert sorted(map(int, logged.values_list("object_id", flat=True))) == sorted(
        run.pk for run in ready
    )
    assert len(finished) == 3


@pytest.mark.django_db
def test_select_across_asks_first_with_the_counts_and_the_cap(canceller):
    ready = [ready_echo(i) for i in range(4)]
    make_run("echo", State.RUNNING, attempts=1)
    make_run("echo", State.FAILED)
    other = make_run("add")  # another task: outside the filter

    page = action_post(canceller, ready[:1], query="?task_name=echo", select_across="1")

    text = page.content.decode()
    assert page.status_code == 200
    assert "Cancel every ready run matching this filter" in text
    assert "<code>task_name=echo</code>" in text
    assert "Runs matching: 6." in text
    assert "to be cancelled: 4." in text
    assert "Running, left alone because a task that has started cannot be stopped: 1." in text
    assert "One click may cancel at most 1,000 runs" in text
    assert 'value="cancel_selected"' in text and "Yes, cancel 4 runs" in text
    assert TaskExecution.objects.filter(status=State.CANCELLED).count() == 0  # nothing yet

    confirmed = action_messages(
        canceller, ready[:1], query="?task_name=echo", select_across="1", confirm="yes"
    )
    assert "Cancelled 4 runs" in confirmed
    assert set(
        TaskExecution.objects.filter(status=State.CANCELLED).values_list("pk", flat=True)
    ) == {run.pk for run in ready}
    assert TaskExecution.objects.get(pk=other.pk).status == State.READY
    assert LogEntry.objects.count() == 4


@pytest.mark.django_db
def test_select_across_over_the_cap_says_so_and_cancels_nothing(canceller):
    runs = [ready_echo(i) for i in range(4)]
    with override_settings(TASKS_ADMIN_RETRY_LIMIT=3):
        page = action_post(canceller, runs[:1], select_across="1").content.decode()
        assert (
            "More than 3 of the selected runs can be cancelled, and one click may cancel "
            "at most 3 (the TASKS_ADMIN_RETRY_LIMIT setting)." in page
        )
        assert "Yes, cancel" not in page
        forged = action_messages(canceller, runs[:1], select_across="1", confirm="yes")
        assert "More than 3 of the selected runs can be cancelled" in forged
    assert not TaskExecution.objects.filter(status=State.CANCELLED).exists()
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_select_across_with_nothing_ready_says_so(canceller):
    ended = make_run("echo", State.SUCCESSFUL)
    page = action_post(canceller, [ended], select_across="1").content.decode()
    assert "Nothing here can be cancelled" in page
    assert "Yes, cancel" not in page


@pytest.mark.django_db
def test_a_bulk_cancel_that_loses_to_a_delivery_counts_it_as_changed(canceller, monkeypatch):
    runs = [ready_echo(i) for i in range(2)]
    real = TaskExecution.record_cancelled

    def started_meanwhile(self, using, reason):
        if self.pk == runs[0].pk:  # a delivery starts it between the read and the write
            TaskExecution.objects.filter(pk=self.pk).update(status=State.RUNNING, attempts=1)
        return real(self, using, reason)

    monkeypatch.setattr(TaskExecution, "record_cancelled", started_meanwhile)
    text = action_messages(canceller, runs)
    assert "Cancelled 1 run: its task will not run." in text
    assert "1 runs started (or changed) while they were being cancelled" in text
    assert TaskExecution.objects.get(pk=runs[0].pk).status == State.RUNNING
    assert TaskExecution.objects.get(pk=runs[1].pk).status == State.CANCELLED


# --- End to end through the Pub/Sub emulator -------------------------------------------------


@pytest.fixture
def wired(route_through_emulator):
    """The echo task routed through the emulator to the live server (tests/conftest.py)."""
    route_through_emulator("echo", min_backoff=1, max_backoff=2)
    yield
    task_backends["default"].__dict__.pop("publisher", None)


def wait_until(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not done within {timeout}s")


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_emulator_a_held_run_cancelled_is_acknowledged_unrun_and_never_runs(wired, calls, caplog):
    """enqueue() publishes to the emulator; the kill switch holds the delivery (429) so the
    emulator keeps it; the run is cancelled; its next delivery is acknowledged (200
    ``cancelled``), the emulator stops delivering it, and the task never runs — also once
    the switch is on again. A run enqueued beside it, not cancelled, runs once switched on."""
    import logging

    caplog.set_level(logging.INFO, logger="gyrinx_tasks")
    switch = KillSwitch.objects.create(
        task_name="echo", enabled=False, mode=SwitchMode.HOLD, reason="e2e: hold"
    )
    doomed = tasks.echo.enqueue("cancelled")
    kept = tasks.echo.enqueue("kept")

    def held(result_id):
        return any(
            r.msg.startswith("Held %s") and r.args[1] == result_id
            for r in caplog.records
            if r.name == "gyrinx_tasks"
        )

    wait_until(lambda: held(doomed.id))  # delivered, held: the emulator keeps it
    done = gyrinx_tasks.cancel(doomed.id, by="e2e")
    assert done.cancelled

    def acknowledged():
        found = TaskExecution.objects.get(result_id=doomed.id)
        notes = [entry.get("note", "") for entry in found.timeline]
        return found if any(CANCELLED_ACK_NOTE in note for note in notes) else None

    def ack_lines():
        return [
            r
            for r in caplog.records
            if r.name == "gyrinx_tasks"
            and r.msg.startswith("Acknowledged a delivery of cancelled run")
        ]

    # The live server's thread notes the acknowledgement on the run, then logs it: wait for
    # both before reading either.
    run = wait_until(lambda: ack_lines() and acknowledged())
    assert (run.status, run.attempts) == (State.CANCELLED, 0)
    acks = ack_lines()
    assert acks

    switch.enabled = True
    switch.save()
    wait_until(lambda: TaskExecution.objects.get(result_id=kept.id).status == State.SUCCESSFUL)
    time.sleep(4)  # a redelivery of the cancelled message would arrive within this (1-2 s)
    assert calls == [(("kept",), {})]  # the cancelled task never ran
    run = TaskExecution.objects.get(result_id=doomed.id)
    assert (run.status, run.attempts) == (State.CANCELLED, 0)
    assert len(ack_lines()) == len(acks)  # acknowledged: the emulator delivered it no more
    assert sum(CANCELLED_ACK_NOTE in e.get("note", "") for e in run.timeline) == 1
