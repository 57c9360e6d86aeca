"""The retry side of a run's life (issue 16, behaviours 9, 10 and 11): a retry settles the
original Pub/Sub still redelivers, a run a live retry stands for is not retried again, and a
READY run whose message may never have reached Pub/Sub can be published again."""

import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.tasks import task_backends
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import clients
from gyrinx_tasks.models import PUBLISH_UNCONFIRMED, State, TaskExecution, Trigger
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.retry import (
    RetryRefused,
    republish_run,
    retry_queryset,
    retry_run,
)
from tests import tasks
from tests.helpers import envelope, push

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"


def make_run(task_name: str = "add", status: str = State.READY, **fields) -> TaskExecution:
    run = TaskExecution(task_name=task_name, task_path=f"tests.tasks.{task_name}", **fields)
    run.task_id = run.result_id
    run._log("", State.READY, "enqueued")
    run.save()
    # The states are set directly here; each transition has its own test.
    TaskExecution.objects.filter(pk=run.pk).update(status=status)
    run.refresh_from_db()
    return run


@pytest.fixture
def retrier(client):
    user = User.objects.create_user("retrier", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        codename__in=["view_taskexecution", "retry_taskexecution"]))
    client.force_login(user)
    return client


# -- behaviour 9: a retry of a run Pub/Sub still redelivers never runs the task twice --------

@pytest.fixture
def flaky_topic(pubsub_emulator):
    """The flaky task's topic on the emulator with a pull subscription; yields pull(n)."""
    route = get_route("flaky")
    backend = task_backends["default"]
    backend.__dict__.pop("publisher", None)  # the shared client for the emulator's host
    topic = backend.topic_path(route.topic_name)
    subscription = pubsub_emulator.subscription_path(f"retry-{time.monotonic_ns()}")
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=600)

    def pull(expected: int) -> list:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
            got += list(response.received_messages)
        return got

    def settle(received, status_code: int) -> None:
        # What Pub/Sub does with a push answer: acknowledge, or deliver it again.
        if status_code in (102, 200, 201, 202, 204):
            subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
        else:
            subscriber.modify_ack_deadline(subscription=subscription,
                                           ack_ids=[received.ack_id], ack_deadline_seconds=0)

    pull.settle = settle  # type: ignore[attr-defined]
    yield pull
    subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
    publisher.stop()
    backend.__dict__.pop("publisher", None)


def push_received(received, attempt: int):
    message = received.message
    return push(Client(), envelope(json.loads(message.data), message_id=message.message_id,
                                   delivery_attempt=attempt,
                                   attributes=dict(message.attributes)))


@pytest.mark.django_db(transaction=True)
def test_retrying_a_run_pubsub_still_redelivers_runs_the_task_once(no_oidc, flaky_topic):
    original = tasks.flaky.enqueue("order-1")
    [first] = flaky_topic(1)
    response = push_received(first, attempt=1)  # the first attempt fails on purpose
    assert response.status_code >= 400
    flaky_topic.settle(first, response.status_code)  # so Pub/Sub will deliver it again
    run = TaskExecution.objects.get(result_id=original.id)
    assert (run.status, run.gave_up) == (State.FAILED, False)

    retry = retry_run(run)  # staff retry it while Pub/Sub still redelivers it

    received = flaky_topic(2)  # the original's redelivery and the retry's message
    assert sorted(json.loads(r.message.data)["task_id"] for r in received) == sorted(
        [original.id, retry.result_id])
    for item in received:
        response = push_received(item, attempt=2)
        assert response.status_code == 200, response.content
        flaky_topic.settle(item, response.status_code)

    # Before issue 16 both succeeded: the task ran twice.
    assert TaskExecution.objects.filter(task_name="flaky", status=State.SUCCESSFUL).count() == 1
    run.refresh_from_db()
    assert (run.status, run.gave_up) == (State.FAILED, True)
    assert f"Retried as run {retry.result_id}" in run.status_detail
    staff = User.objects.create_superuser("staff", password="pw")
    admin = Client()
    admin.force_login(staff)
    page = admin.get(reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk]))
    assert "Retried as a new run (see its retries)" in page.content.decode()
    assert "Gave up after" not in page.content.decode()
    assert TaskExecution.objects.get(pk=retry.pk).status == State.SUCCESSFUL


@pytest.mark.django_db
def test_a_retry_is_refused_when_a_delivery_started_the_run_meanwhile(fake_publisher):
    original = make_run("add", State.FAILED, args=[1, 2], attempts=1)
    # Pub/Sub redelivers it while staff look at the page they loaded before.
    TaskExecution.objects.filter(pk=original.pk).update(status=State.RUNNING, attempts=2)
    original.status = State.FAILED  # the page's stale copy: the actual row is RUNNING

    with pytest.raises(RetryRefused, match="changed while it was being retried"):
        retry_run(original)

    # Before issue 16: a new run was published while the redelivery ran the task.
    assert fake_publisher.published == []
    assert not TaskExecution.objects.filter(retry_of=original).exists()
    assert TaskExecution.objects.get(pk=original.pk).status == State.RUNNING


# -- behaviour 10: a run a live retry stands for is marked and not retried again -------------

@pytest.mark.django_db
def test_retry_one_then_retry_all_matching_skips_the_retried_run(fake_publisher):
    retried = make_run("add", State.FAILED, args=[1, 1])
    other = make_run("add", State.FAILED, args=[2, 2])
    retry_run(retried)

    report = retry_queryset(TaskExecution.objects.filter(status=State.FAILED), limit=10)

    # Before issue 16: both were retried, so the first task would run twice.
    assert TaskExecution.objects.filter(retry_of=retried).count() == 1
    assert TaskExecution.objects.filter(retry_of=other).count() == 1
    assert (report.retried, report.already_retried) == (1, 1)
    assert len(fake_publisher.published) == 2


@pytest.mark.django_db
def test_a_run_whose_retry_was_rejected_can_be_retried_again(fake_publisher):
    original = make_run("add", State.FAILED, args=[1, 1])
    first = retry_run(original)
    TaskExecution.objects.filter(pk=first.pk).update(status=State.REJECTED)
    original.refresh_from_db()

    second = retry_run(original)

    assert second.pk != first.pk and second.retry_of_id == original.pk


@pytest.mark.django_db
def test_retrying_a_retried_run_again_is_refused_with_a_sentence(fake_publisher):
    original = make_run("add", State.REJECTED, args=[1, 1])
    first = retry_run(original)
    original.refresh_from_db()

    with pytest.raises(RetryRefused, match=f"already retried as run {first.result_id}, which "
                                           "is ready; retry that run instead"):
        retry_run(original)
    assert len(fake_publisher.published) == 1


@pytest.mark.django_db
def test_two_retries_from_one_stale_copy_make_one(fake_publisher):
    original = make_run("add", State.SKIPPED, args=[1, 1])
    stale = TaskExecution.objects.get(pk=original.pk)

    assert original.record_retried("default", "Retried as run a.", settle=False)
    assert not stale.record_retried("default", "Retried as run b.", settle=False)


@pytest.mark.django_db
def test_staff_retry_one_then_all_matching_in_the_admin(retrier, fake_publisher):
    """As staff would: Retry on a run's page, then "retry all matching" on the list."""
    retried = make_run("add", State.FAILED, args=[1, 1])
    make_run("add", State.FAILED, args=[2, 2])
    retrier.post(reverse("admin:gyrinx_tasks_taskexecution_retry", args=[retried.pk]))
    page = retrier.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                               args=[retried.pk])).content.decode()
    assert "gyrinx-retry-button" not in page and "already retried as run" in page

    url = reverse(CHANGELIST) + "?status=FAILED"
    data = {"action": "retry_selected", "index": "0", "select_across": "1",
            "_selected_action": [str(retried.pk)]}
    confirm = retrier.post(url, data).content.decode()
    assert "to be retried as new runs: 1." in confirm
    assert "Skipped because a retry of each is waiting, running or succeeded: 1." in confirm
    done = retrier.post(url, {**data, "confirm": "yes"}, follow=True).content.decode()

    new = TaskExecution.objects.filter(retry_of__status=State.FAILED).exclude(
        retry_of=retried).get()
    change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[new.pk])
    assert f'Retried 1 run as a new run: <a href="{change}">see it</a>.' in done
    assert "1 selected runs were skipped because a retry of each is waiting" in done
    assert TaskExecution.objects.filter(retry_of=retried).count() == 1
    assert len(fake_publisher.published) == 2


# -- behaviour 11: a READY run whose message may never have reached Pub/Sub is recoverable ---

def unconfirmed_run() -> TaskExecution:
    run = make_run("add", State.READY, args=[4, 5], enqueued_at=timezone.now())
    TaskExecution.objects.filter(pk=run.pk).update(status_detail=PUBLISH_UNCONFIRMED)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_staff_publish_an_unconfirmed_run_again_from_its_page(retrier, fake_publisher,
                                                               no_oidc):
    run = unconfirmed_run()
    change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])
    assert "gyrinx-republish-button" in retrier.get(change).content.decode()

    response = retrier.post(reverse("admin:gyrinx_tasks_taskexecution_republish",
                                    args=[run.pk]), follow=True)

    # Before issue 16 there was no such action: the run could only be looked at.
    assert "Published again" in response.content.decode()
    [(_topic, message, attrs)] = fake_publisher.published
    assert message["task_id"] == run.result_id and message["args"] == [4, 5]
    run.refresh_from_db()
    assert (run.status, run.status_detail) == (State.READY, "")
    assert run.timeline[-1]["note"] == "published again by retrier"
    # Both messages may arrive: the task still runs once.
    assert push(Client(), envelope(message, "m-again", attributes=attrs)).status_code == 200
    assert push(Client(), envelope(message, "m-first", attributes=attrs)).status_code == 200
    run.refresh_from_db()
    assert (run.status, run.attempts, run.return_value) == (State.SUCCESSFUL, 1, 9)


@pytest.mark.django_db
def test_a_ready_run_stale_past_its_ack_deadline_can_be_published_again(fake_publisher):
    deadline = get_route("add").ack_deadline
    run = make_run("add", State.READY, args=[1, 1],
                   enqueued_at=timezone.now() - timedelta(seconds=deadline + 1))

    assert republish_run(run) is True
    assert len(fake_publisher.published) == 1


@pytest.mark.django_db
def test_a_fresh_confirmed_or_started_run_is_not_published_again(fake_publisher):
    fresh = make_run("add", State.READY, args=[1, 1], enqueued_at=timezone.now())
    with pytest.raises(RetryRefused, match="less than its ack deadline"):
        republish_run(fresh)
    started = make_run("add", State.RUNNING, args=[1, 1], attempts=1)
    with pytest.raises(RetryRefused, match="no delivery has started"):
        republish_run(started)
    assert fake_publisher.published == []


@pytest.mark.django_db
def test_a_failed_publish_again_keeps_the_run_ready(fake_publisher):
    from google.api_core.exceptions import PermissionDenied

    fake_publisher.error = PermissionDenied("not allowed")
    run = unconfirmed_run()

    assert republish_run(run) is False

    run.refresh_from_db()
    # Not FAILED: the first publish may still be delivered.
    assert (run.status, run.status_detail) == (State.READY, PUBLISH_UNCONFIRMED)
    assert run.trigger == Trigger.ENQUEUE
