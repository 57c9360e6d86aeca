"""Recovering a run stuck RUNNING past its ack deadline (issue 19, item 5): "Give up and retry"
(gyrinx_tasks/abandon.py) settles the original as failed for good and enqueues a retry, in one
conditional transition. A later redelivery of the original is acknowledged unrun; a worker
that was only slow and finishes late has its outcome noted, never written over the record;
the recovery and a late outcome racing make exactly one winner. Refused within the deadline,
without the permission, and for a run a retry already stands for. From the run's page (HTMX
and plain) and as a bulk action on the stuck filter, audited.

The races run on SQLite and PostgreSQL (GYRINX_TEST_DB=postgres).
"""

import logging
import re
import threading
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import abandon
from gyrinx_tasks.health import StuckKind, stuck_filter
from gyrinx_tasks.models import ABANDONED_ERROR, State, TaskExecution, Trigger
from gyrinx_tasks.outcomes import OutcomeKind
from gyrinx_tasks.push import parse_envelope
from gyrinx_tasks.record import record_outcome
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.retry import RetryRefused
from gyrinx_tasks.runner import handle_delivery
from tests.helpers import (
    envelope,
    finished_statuses,
    in_thread,
    push,
    staff_user,
    use_publisher,
)

pytestmark = [pytest.mark.usefixtures("no_oidc"), pytest.mark.clock]

RUNS = "admin:gyrinx_tasks_taskexecution_changelist"
RECORDED = {"gyrinx_recorded": "1"}
WAIT = 30  # seconds any one thread may take before the test fails instead of hanging
RETRY_PERMS = ("view_taskexecution", "retry_taskexecution")


def running_echo(started_ago=timedelta(minutes=10), attempts=1, arg="hi"):
    """An echo run RUNNING at ``attempts``, its attempt started ``started_ago`` (echo's ack
    deadline is TaskRoute's default, 300 s), with the message id of its delivery."""
    now = timezone.now()
    run = TaskExecution(
        task_name="echo",
        task_path="tests.tasks.echo",
        args=[arg],
        enqueued_at=now - started_ago - timedelta(seconds=1),
    )
    run.task_id = run.result_id
    run._log("", State.READY, "enqueued")
    run.save()
    run.remember_progress()
    run.start("worker-1", 1)
    run.message_id = f"m-{run.result_id[:8]}"
    TaskExecution.objects.write_transition(run)
    # Backdate the attempt as if it had started ``started_ago``.
    TaskExecution.objects.filter(pk=run.pk).update(
        attempts=attempts,
        last_attempted_at=now - started_ago,
        started_at=now - started_ago,
        created_at=now - started_ago - timedelta(seconds=1),
    )
    return TaskExecution.objects.get(pk=run.pk)


def message_of(run, delivery_attempt=2) -> bytes:
    """The push body of a redelivery of ``run``'s message."""
    payload = {
        "task_id": run.result_id,
        "task_name": run.task_name,
        "args": run.args,
        "kwargs": run.kwargs,
        "enqueued_at": run.enqueued_at.isoformat(),
    }
    return envelope(
        payload, message_id=run.message_id, delivery_attempt=delivery_attempt, attributes=RECORDED
    )


def change_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])


def abandon_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_abandon", args=[run.pk])


def late_success(worker_copy):
    """What the worker that started ``worker_copy`` writes when its task returns late."""
    return record_outcome(
        worker_copy,
        get_route("echo"),
        OutcomeKind.RAN,
        lambda run: run.succeed({"late": True}),
        "succeeded",
        "done",
    )


# --- The transition and what comes after it --------------------------------------------------


@pytest.mark.django_db
def test_a_run_past_its_ack_deadline_is_given_up_and_retried_as_a_new_run(fake_publisher):
    stuck = running_echo()
    seen, disconnect = finished_statuses()
    user = staff_user("ops")
    try:
        new = abandon.abandon_run(stuck, user)
    finally:
        disconnect()

    assert (new.status, new.trigger, new.retry_of_id) == (State.READY, Trigger.RETRY, stuck.pk)
    assert new.args == ["hi"]
    [(_topic, message, _attrs)] = fake_publisher.published
    assert message["task_id"] == new.result_id
    stuck.refresh_from_db()
    assert (stuck.status, stuck.gave_up, stuck.attempts) == (State.FAILED, True, 1)
    assert stuck.shown_status == "FAILED"  # failed for good, not "will retry"
    assert stuck.status_detail.startswith(
        "Attempt 1 given up as lost by ops: it ran longer than its ack deadline (300 s)"
    )
    assert f"Retried as run {new.result_id}." in stuck.status_detail
    assert stuck.errors[-1]["exception_class_path"] == ABANDONED_ERROR
    assert (stuck.timeline[-1]["from"], stuck.timeline[-1]["to"]) == (State.RUNNING, State.FAILED)
    # It has ended: Django's task_finished is sent for it, once, FAILED.
    assert seen == ["FAILED"]
    # No longer stuck.
    assert not TaskExecution.objects.filter(stuck_filter(StuckKind.RUNNING)).exists()


@pytest.mark.django_db
def test_within_its_ack_deadline_the_run_may_really_be_running_and_is_refused(fake_publisher):
    alive = running_echo(started_ago=timedelta(seconds=100))
    with pytest.raises(RetryRefused) as refused:
        abandon.abandon_run(alive)
    assert re.match(
        r"Attempt 1 started 10\d s ago, within its ack deadline \(300 s\): it may "
        "really be running",
        str(refused.value),
    )
    assert "it can be given up and retried" in str(refused.value)
    assert TaskExecution.objects.get(pk=alive.pk).status == State.RUNNING
    assert not TaskExecution.objects.filter(retry_of=alive).exists()
    assert fake_publisher.published == []


@pytest.mark.django_db
def test_only_running_runs_and_not_one_a_retry_already_stands_for(fake_publisher):
    for status in (State.READY, State.FAILED, State.SUCCESSFUL):
        run = running_echo()
        TaskExecution.objects.filter(pk=run.pk).update(status=status)
        run.refresh_from_db()
        with pytest.raises(RetryRefused, match="only a RUNNING run whose attempt is past"):
            abandon.abandon_run(run)
    # A dead letter of it replayed already made a retry: that retry stands for it.
    stuck = running_echo()
    TaskExecution.objects.create(task_name="echo", trigger=Trigger.RETRY, retry_of=stuck)
    with pytest.raises(RetryRefused, match="already retried as run"):
        abandon.abandon_run(stuck)
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.RUNNING
    assert fake_publisher.published == []


@pytest.mark.django_db
def test_the_redelivery_of_the_original_after_recovery_is_acknowledged_unrun(
    client, calls, fake_publisher
):
    stuck = running_echo(arg="original")
    new = abandon.abandon_run(stuck)

    response = push(client, message_of(stuck))
    assert (response.status_code, response.json()["outcome"]) == (200, "duplicate")
    assert calls == []  # the original's redelivery never runs the task
    after = TaskExecution.objects.get(pk=stuck.pk)
    assert (after.status, after.attempts, after.gave_up) == (State.FAILED, 1, True)
    assert f"Retried as run {new.result_id}" in after.status_detail

    # The retry's own delivery runs the task, once.
    [(_topic, message, _attrs)] = fake_publisher.published
    body = envelope(message, message_id="m-retry", attributes=RECORDED)
    assert push(client, body).json()["outcome"] == "ran"
    assert push(client, body).json()["outcome"] == "duplicate"
    assert calls == [(("original",), {})]


@pytest.mark.django_db
def test_a_worker_that_was_only_slow_finishes_late_and_its_outcome_is_only_noted(
    fake_publisher, caplog
):
    stuck = running_echo()
    worker_copy = TaskExecution.objects.get(pk=stuck.pk).remember_progress()
    new = abandon.abandon_run(stuck)

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        outcome = late_success(worker_copy)

    assert outcome.kind == OutcomeKind.SUPERSEDED
    assert "settled meanwhile" in outcome.detail
    after = TaskExecution.objects.get(pk=stuck.pk)
    assert (after.status, after.gave_up, after.return_value) == (State.FAILED, True, None)
    note = after.timeline[-1]["note"]
    assert note.startswith(
        "attempt 1 succeeded after it was superseded (the run was settled "
        "meanwhile, now FAILED, attempt 1: Attempt 1 given up as lost"
    )
    assert f"Retried as run {new.result_id}" in note
    assert any(
        "after the run was settled without it" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


@pytest.mark.django_db
def test_a_redelivery_that_started_the_run_again_first_makes_the_recovery_refuse(
    client, calls, fake_publisher
):
    stuck = running_echo()
    page_copy = TaskExecution.objects.get(pk=stuck.pk)  # what the page read
    assert push(client, message_of(stuck)).json()["outcome"] == "ran"  # attempt 2 ran

    with pytest.raises(RetryRefused) as refused:
        abandon.abandon_run(page_copy)
    assert str(refused.value) == abandon.CHANGED
    assert not TaskExecution.objects.filter(retry_of=stuck).exists()
    assert fake_publisher.published == []
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.SUCCESSFUL


# --- A real race: the recovery against the late outcome's write -----------------------------


@pytest.mark.django_db(transaction=True)
def test_recovery_and_a_late_outcome_at_the_same_moment_exactly_one_wins(fake_publisher):
    """Many times over, each on its own connection, let go at once: the staff's recovery and
    the outcome of a worker that was only slow. Either the outcome wins (SUCCESSFUL, nothing
    retried, the recovery refused) or the recovery does (FAILED for good, one retry, the
    outcome noted): never both, never neither."""
    wins = {"recovery": 0, "outcome": 0}
    for i in range(20):
        stuck = running_echo(arg=f"race-{i}")
        worker_copy = TaskExecution.objects.get(pk=stuck.pk).remember_progress()
        page_copy = TaskExecution.objects.get(pk=stuck.pk)
        barrier = threading.Barrier(2)

        def finish(copy=worker_copy, barrier=barrier):
            barrier.wait(WAIT)
            return late_success(copy)

        def recover(copy=page_copy, barrier=barrier):
            use_publisher(fake_publisher)  # the backends are per thread
            barrier.wait(WAIT)
            return abandon.abandon_run(copy)

        (t1, outcomes), (t2, recoveries) = in_thread(finish), in_thread(recover)
        t1.join(WAIT)
        t2.join(WAIT)
        [outcome], [recovered] = outcomes, recoveries
        assert not isinstance(outcome, BaseException), outcome
        final = TaskExecution.objects.get(pk=stuck.pk)
        retries = list(TaskExecution.objects.filter(retry_of=stuck))
        if isinstance(recovered, TaskExecution):
            wins["recovery"] += 1
            assert outcome.kind == OutcomeKind.SUPERSEDED
            assert (final.status, final.gave_up, final.return_value) == (State.FAILED, True, None)
            assert [r.pk for r in retries] == [recovered.pk]
            assert final.timeline[-1]["note"].startswith(
                "attempt 1 succeeded after it was superseded"
            )
        else:
            wins["outcome"] += 1
            assert isinstance(recovered, RetryRefused), recovered
            assert outcome.kind == OutcomeKind.RAN
            assert (final.status, final.return_value) == (State.SUCCESSFUL, {"late": True})
            assert retries == []
    assert sum(wins.values()) == 20
    # Every retry made was published; no retry was made for a run whose outcome won.
    assert len(fake_publisher.published) == wins["recovery"]


@pytest.mark.django_db(transaction=True)
def test_recovery_and_a_redelivery_at_the_same_moment_run_the_task_once_more_at_most(
    calls, fake_publisher
):
    """The recovery against a redelivery of the stuck run, let go at once: either the
    redelivery starts attempt 2 and runs the task (the recovery is refused, nothing retried),
    or the recovery wins and the redelivery is acknowledged unrun (one retry, to run once)."""
    for i in range(10):
        stuck = running_echo(arg=f"redeliver-{i}")
        page_copy = TaskExecution.objects.get(pk=stuck.pk)
        body = message_of(stuck)
        barrier = threading.Barrier(2)

        def deliver(body=body, barrier=barrier):
            barrier.wait(WAIT)
            return handle_delivery(parse_envelope(body), "raw")

        def recover(copy=page_copy, barrier=barrier):
            use_publisher(fake_publisher)  # the backends are per thread
            barrier.wait(WAIT)
            return abandon.abandon_run(copy)

        (t1, delivered), (t2, recoveries) = in_thread(deliver), in_thread(recover)
        t1.join(WAIT)
        t2.join(WAIT)
        [outcome], [recovered] = delivered, recoveries
        assert not isinstance(outcome, BaseException), outcome
        ran = [args for args, _kw in calls if args == (f"redeliver-{i}",)]
        retries = TaskExecution.objects.filter(retry_of=stuck).count()
        if isinstance(recovered, TaskExecution):
            assert outcome.kind in (OutcomeKind.DUPLICATE, OutcomeKind.BUSY)
            assert (ran, retries) == ([], 1)
        else:
            assert isinstance(recovered, RetryRefused), recovered
            assert outcome.kind == OutcomeKind.RAN
            assert (len(ran), retries) == (1, 0)


# --- The admin: the run's page -----------------------------------------------------------------


@pytest.fixture
def operator(client):
    user = staff_user("operator", *RETRY_PERMS)
    client.force_login(user)
    return client


HTMX = {"HX-Request": "true"}


@pytest.mark.django_db
def test_without_the_retry_permission_no_panel_no_action_and_posts_are_refused(
    client, fake_publisher
):
    client.force_login(staff_user("viewer", "view_taskexecution", "cancel_taskexecution"))
    stuck = running_echo()
    assert "gyrinx-abandon" not in client.get(change_url(stuck)).content.decode()
    assert "abandon_selected" not in client.get(reverse(RUNS)).content.decode()
    assert client.get(abandon_url(stuck)).status_code == 403
    assert client.post(abandon_url(stuck), {"confirm": "yes"}, headers=HTMX).status_code == 403
    response = client.post(
        reverse(RUNS),
        {
            "action": "abandon_selected",
            "index": "0",
            "_selected_action": [stuck.pk],
            "confirm": "yes",
        },
    )
    assert response.status_code == 403
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.RUNNING
    assert fake_publisher.published == [] and not LogEntry.objects.exists()


@pytest.mark.django_db
def test_the_run_page_asks_first_then_gives_up_and_retries_in_place_and_audits(
    operator, fake_publisher
):
    stuck = running_echo()
    page = operator.get(change_url(stuck)).content.decode()
    assert "gyrinx-abandon-button" in page and "Give up and retry" in page

    # The button asks first, in place (GET: nothing changes).
    asked = operator.get(abandon_url(stuck), headers=HTMX)
    html = asked.content.decode()
    assert asked.status_code == 200 and html.lstrip().startswith('<div id="gyrinx-abandon"')
    assert "If its worker is still alive" in html and "the task then runs twice" in html
    assert 'name="confirm" value="yes"' in html
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.RUNNING

    done = operator.post(abandon_url(stuck), {"confirm": "yes"}, headers=HTMX)
    html = done.content.decode()
    new = TaskExecution.objects.get(retry_of=stuck)
    assert "Given up as lost and retried as" in html and new.result_id in html
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.FAILED
    [entry] = LogEntry.objects.all()
    assert entry.object_id == str(stuck.pk)
    assert entry.change_message == (
        f"Gave up the running attempt as lost (past its ack "
        f"deadline). Retried as run {new.pk} ({new.result_id})."
    )

    # Clicked again from a stale page: refused with the sentence, nothing more done.
    again = operator.post(abandon_url(stuck), {"confirm": "yes"}, headers=HTMX)
    assert "only a RUNNING run whose attempt is past" in again.content.decode()
    assert TaskExecution.objects.filter(retry_of=stuck).count() == 1


@pytest.mark.django_db
def test_without_htmx_the_confirmation_is_a_page_and_the_post_redirects(operator, fake_publisher):
    stuck = running_echo()
    page = operator.get(abandon_url(stuck))
    html = page.content.decode()
    assert page.status_code == 200 and "<html" in html
    assert "If its worker is still alive" in html
    # A POST without confirm=yes only asks.
    assert "Yes, give up and retry" in operator.post(abandon_url(stuck)).content.decode()
    assert TaskExecution.objects.get(pk=stuck.pk).status == State.RUNNING

    response = operator.post(abandon_url(stuck), {"confirm": "yes"}, follow=True)
    new = TaskExecution.objects.get(retry_of=stuck)
    assert response.redirect_chain[-1][0] == change_url(new)
    assert "Gave up run" in [str(m) for m in response.context["messages"]][0]


@pytest.mark.django_db
def test_a_running_run_within_its_deadline_says_when_it_can_be_given_up(operator, fake_publisher):
    alive = running_echo(started_ago=timedelta(minutes=1))
    page = operator.get(change_url(alive)).content.decode()
    assert "gyrinx-abandon-refused" in page and "gyrinx-abandon-button" not in page
    assert "it may really be running" in page
    response = operator.post(abandon_url(alive), {"confirm": "yes"}, headers=HTMX)
    assert "within its ack deadline" in response.content.decode()
    response = operator.post(abandon_url(alive), {"confirm": "yes"}, follow=True)
    [text] = [str(m) for m in response.context["messages"]]
    assert re.match(r"Attempt 1 started 6\d s ago, within its ack deadline", text)
    assert TaskExecution.objects.get(pk=alive.pk).status == State.RUNNING
    assert fake_publisher.published == [] and not LogEntry.objects.exists()


@pytest.mark.django_db
def test_ended_runs_show_no_give_up_panel(operator):
    stuck = running_echo()
    TaskExecution.objects.filter(pk=stuck.pk).update(status=State.SUCCESSFUL)
    assert "gyrinx-abandon" not in operator.get(change_url(stuck)).content.decode()


# --- The admin: the stuck list's bulk action ---------------------------------------------------


def bulk(client, runs, query="?stuck=running", **extra):
    return client.post(
        reverse(RUNS) + query,
        {
            "action": "abandon_selected",
            "index": "0",
            "_selected_action": [str(run.pk) for run in runs],
            **extra,
        },
    )


@pytest.mark.django_db
def test_the_bulk_action_asks_first_then_gives_up_the_stuck_ones_only(operator, fake_publisher):
    stuck = [running_echo(arg=f"s{i}") for i in range(2)]
    alive = running_echo(started_ago=timedelta(minutes=1), arg="alive")
    asked = bulk(operator, [*stuck, alive], query="")
    html = asked.content.decode()
    assert asked.status_code == 200
    assert "Runs selected: 3." in html
    assert "to be given up as lost and retried as new runs: 2." in html
    assert "Running within their ack deadline, left alone (they may really be running): 1." in html
    assert "it may still finish its task too: that task then runs twice" in html
    assert not TaskExecution.objects.filter(trigger=Trigger.RETRY).exists()

    response = bulk(operator, [*stuck, alive], query="", confirm="yes")
    assert response.status_code == 302
    texts = [str(m) for m in operator.get(response["Location"]).context["messages"]]
    assert texts[0].startswith("Gave up 2 stuck runs and retried them as new runs")
    assert texts[1] == (
        "1 selected runs are running within their ack deadline and were left "
        "alone: they may really be running."
    )
    for run in stuck:
        run.refresh_from_db()
        assert (run.status, run.gave_up) == (State.FAILED, True)
        assert TaskExecution.objects.filter(retry_of=run).count() == 1
    assert TaskExecution.objects.get(pk=alive.pk).status == State.RUNNING
    assert len(fake_publisher.published) == 2
    assert (
        LogEntry.objects.filter(
            change_message__startswith="Gave up the running attempt as lost"
        ).count()
        == 2
    )


@pytest.mark.django_db
def test_select_across_on_the_stuck_filter_and_the_cap(operator, settings, fake_publisher):
    stuck = [running_echo(arg=f"s{i}") for i in range(3)]
    settings.TASKS_ADMIN_RETRY_LIMIT = 2
    asked = bulk(operator, stuck[:1], select_across="1").content.decode()
    assert "Every run matching the filter:" in asked and "stuck=running" in asked
    assert "More than 2 of the selected runs can be given up and retried" in asked
    assert "Yes, give up and retry" not in asked
    response = bulk(operator, stuck[:1], select_across="1", confirm="yes")
    [text] = [str(m) for m in operator.get(response["Location"]).context["messages"]]
    assert text.startswith("More than 2 of the selected runs can be given up and retried")
    assert fake_publisher.published == []

    settings.TASKS_ADMIN_RETRY_LIMIT = 1000
    response = bulk(operator, stuck[:1], select_across="1", confirm="yes")
    [text] = [str(m) for m in operator.get(response["Location"]).context["messages"]]
    assert text.startswith("Gave up 3 stuck runs and retried them as new runs")
    assert len(fake_publisher.published) == 3


@pytest.mark.django_db
def test_the_stuck_list_names_the_recovery(operator):
    running_echo()
    html = operator.get(reverse(RUNS), {"stuck": "running"}).content.decode()
    assert "Give up and retry on the run" in html
    assert "the task can run twice" in html


@pytest.mark.django_db
def test_the_cancel_panel_of_a_stuck_run_points_to_give_up_not_to_waiting(client, fake_publisher):
    """A RUNNING run cannot be cancelled. Within its ack deadline the page says to wait for it
    to end; past it (its worker may have died) waiting could be for ever, so it says what
    recovers the run instead."""
    client.force_login(staff_user("canceller", "view_taskexecution", "cancel_taskexecution"))
    stuck = running_echo()
    busy = running_echo(started_ago=timedelta(seconds=5), arg="busy")

    def refusal(run):
        page = client.get(change_url(run)).content.decode()
        return re.search(r'class="gyrinx-cancel-refused">(.*?)</p>', page, re.S).group(1)

    assert "past its ack deadline" in refusal(stuck) and "Give up and retry" in refusal(stuck)
    assert "Wait for it to end" not in refusal(stuck)
    assert "Wait for it to end" in refusal(busy) and "Give up" not in refusal(busy)
