"""Dead letters: the pull subscription on each dead-letter topic, the "Dead letters" page
(a peek that consumes nothing), and Replay / Discard.

Most tests read a FakeSubscriber (tests/fakes/subscriber.py) that keeps Pub/Sub's lease
rules; the tests marked ``emulator`` check those rules and the whole path on the real
Pub/Sub emulator: a task that keeps failing is dead-lettered by the emulator itself, listed,
replayed, and its new run runs.
"""

import io
import json
import secrets
import time
from dataclasses import replace

import pytest
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import clients, deadletters, registry
from gyrinx_tasks.models import DeadLetter, KillSwitch, State, TaskExecution, Trigger
from gyrinx_tasks.provisioning import (
    Kind,
    ProvisioningConfig,
    Verb,
    apply_plan,
    build_plan,
    desired_state,
)
from gyrinx_tasks.provisioning.pubsub import dead_letter_subscription_path
from tests import deadletter_tasks
from tests.fakes.subscriber import FakeSubscriber
from tests.helpers import make_run, staff_user

PAGE = "admin:gyrinx_tasks_deadletter_changelist"
LIST = "admin:gyrinx_tasks_deadletter_list"
ACT = "admin:gyrinx_tasks_deadletter_act"
TOPIC = f"projects/test-project/topics/{deadletter_tasks.DEAD_LETTER_TOPIC}"
CONFIG = ProvisioningConfig(
    project="test-project",
    location="europe-west2",
    push_endpoint="https://tasks-test.example.run.app/tasks/pubsub/",
    service_account="x@test-project.iam.gserviceaccount.com",
    audience="aud",
)


@pytest.fixture
def dl_registry(settings):
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.deadletter_tasks"
    yield
    registry.clear_cache()


@pytest.fixture
def subscriber(dl_registry, monkeypatch):
    fake = FakeSubscriber()
    fake.messages[sub_path()] = []
    monkeypatch.setattr(deadletters, "open_subscriber", lambda: fake)
    return fake


def sub_path():
    return dead_letter_subscription_path("test-project", TOPIC)


def task_message(task_name, args=(), kwargs=None, task_id="t-1"):
    return json.dumps(
        {"task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": kwargs or {}}
    ).encode()


def dead(fake, data, message_id, source="", count="5"):
    """Put a dead-lettered message on the fake, with the attributes Pub/Sub adds."""
    attributes = {
        deadletters.DELIVERY_COUNT: count,
        deadletters.SOURCE_PUBLISH_TIME: "2026-11-30T10:00:00.123Z",
        deadletters.SOURCE_PROJECT: "test-project",
        "trigger": "enqueue",
    }
    if source:
        attributes[deadletters.SOURCE_SUBSCRIPTION] = source
    fake.add(sub_path(), data, message_id, attributes, publish_time=timezone.now())


def route(name):
    return registry.get_route(name)


# --- Provisioning ---------------------------------------------------------------------------


def test_one_pull_subscription_per_dead_letter_topic_in_the_desired_state(dl_registry):
    subs = [d for d in desired_state(CONFIG) if d.kind == Kind.SUBSCRIPTION]
    pulls = [d for d in subs if "push_config" not in d.body]
    # Three routes share the topic: one subscription, named with the environment's prefix.
    assert [d.name for d in pulls] == [
        "projects/test-project/subscriptions/test--gyrinx.tasks--dead-letters--"
        "gyrinx-test-dead-letters"
    ]
    (pull,) = pulls
    assert pull.body["topic"] == TOPIC
    assert "retry_policy" not in pull.body and "dead_letter_policy" not in pull.body
    assert pull.fields == {
        "topic": TOPIC,
        "ack_deadline_seconds": "60",
        "expiration_policy.ttl": "never",
    }
    assert pull.route is None  # not a route's own subscription on the provisioning page
    assert len(subs) == len(registry.get_routes()) + 1


def test_provisioning_page_shows_it_among_the_other_resources(dl_registry):
    from gyrinx_tasks.admin.provisioning import plan_rows
    from gyrinx_tasks.provisioning import Action, Plan

    plan = Plan(
        CONFIG, [Action(d.kind, d.name, Verb.CREATE, desired=d) for d in desired_state(CONFIG)]
    )
    rows = plan_rows(plan)
    others = {(c["kind"], c["name"]) for c in rows["others"]}
    assert others == {
        (Kind.TOPIC, deadletter_tasks.DEAD_LETTER_TOPIC),
        (Kind.SUBSCRIPTION, sub_path().rsplit("/", 1)[-1]),
    }
    # Each route's own row still shows its push subscription.
    assert all(row["subscription"]["name"].endswith("-sub") for row in rows["rows"])


def test_dead_letter_subscription_names_stay_within_pubsubs_limit():
    long_topic = "projects/other/topics/" + "t" * 250
    name = dead_letter_subscription_path("test-project", long_topic).rsplit("/", 1)[-1]
    assert len(name) == 255
    assert (
        name != dead_letter_subscription_path("test-project", long_topic + "x").rsplit("/", 1)[-1]
    )


def test_checks_e055_e056_bad_dead_letter_topics(settings):
    from django.core import checks

    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.check_registries.dead_letter_topics"
    try:
        found = [
            m
            for m in checks.run_checks(databases=[])
            if (m.id or "").startswith("gyrinx_tasks.E05")
        ]
        assert sorted((m.id, m.obj) for m in found) == [
            ("gyrinx_tasks.E055", "tests.tasks.add"),
            ("gyrinx_tasks.E055", "tests.tasks.echo"),
            ("gyrinx_tasks.E056", "tests.tasks.flaky"),
            ("gyrinx_tasks.E056", "tests.tasks.report_attempt"),
        ]
        assert all(m.hint for m in found)
        # The page and provisioning still name a subscription for a malformed topic.
        assert dead_letter_subscription_path("p", "projects/p/topics/x y").endswith(
            "dead-letters--x y"
        )
    finally:
        registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.deadletter_tasks"
    assert not [
        m for m in checks.run_checks(databases=[]) if (m.id or "").startswith("gyrinx_tasks.E05")
    ]
    registry.clear_cache()


# --- Reading a message ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"this is not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"args": []}', "no task_name"),
        (b'{"task_name": "add", "args": "1, 2"}', "args is not a list"),
        (b'{"task_name": "add", "kwargs": []}', "kwargs is not an object"),
        (b'{"task_name": "add", "task_id": 7}', "task_id is not a string"),
    ],
)
def test_a_message_that_is_not_ours_is_read_as_such(dl_registry, data, problem):
    fake = FakeSubscriber()
    fake.add("s", data, "9", {deadletters.DELIVERY_COUNT: "many"})
    (received,) = fake.pull({"subscription": "s", "max_messages": 1}).received_messages
    letter = deadletters.read_letter(received, deadletters.sources()[0])
    assert problem in letter.problem
    assert letter.task_name == "" and letter.delivery_attempts is None and letter.route is None


def test_route_is_the_subscription_pubsub_names_else_the_task_name(dl_registry):
    source = deadletters.sources()[0]
    fake = FakeSubscriber()
    fake.add(
        "s",
        task_message("add"),
        "1",
        {deadletters.SOURCE_SUBSCRIPTION: route("charge_card").subscription_name},
    )
    fake.add("s", task_message("add"), "2")
    fake.add("s", task_message("explode"), "3")  # a route without this dead-letter topic
    got = [
        deadletters.read_letter(m, source)
        for m in fake.pull({"subscription": "s", "max_messages": 9}).received_messages
    ]
    assert [letter.route and letter.route.name for letter in got] == ["charge_card", "add", None]


# --- Peek -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_peek_gives_every_message_back_so_nothing_is_consumed(subscriber):
    for n in range(3):
        dead(subscriber, task_message("add", [n, 1]), str(n))
    source = deadletters.sources()[0]
    first = deadletters.peek(subscriber, source)
    assert [letter.message_id for letter in first] == ["0", "1", "2"]
    assert subscriber.leased(sub_path()) == []  # all given back at once
    assert [letter.message_id for letter in deadletters.peek(subscriber, source)] == ["0", "1", "2"]
    assert not [call for call in subscriber.calls if call[0] == "acknowledge"]


@pytest.mark.django_db
def test_peek_stops_at_its_limit(subscriber):
    for n in range(5):
        dead(subscriber, task_message("add", [n, 1]), str(n))
    assert len(deadletters.peek(subscriber, deadletters.sources()[0], limit=2)) == 2
    assert subscriber.leased(sub_path()) == []


# --- The page -------------------------------------------------------------------------------


def viewer(*extra):
    return staff_user("viewer", "view_deadletter", *extra)


@pytest.mark.django_db
def test_page_loads_the_list_and_lists_per_route_with_redaction(client, subscriber):
    original = make_run("add", State.FAILED, attempts=7, message_id="77")
    dead(
        subscriber,
        task_message("add", [2, 3], task_id=original.result_id),
        "m-add",
        source=route("add").subscription_name,
        count="7",
    )
    dead(
        subscriber,
        task_message("charge_card", ["alice@example.com", 5]),
        "m-card",
        source=route("charge_card").subscription_name,
    )
    dead(subscriber, b"\x00 not ours alice@example.com", "m-junk")
    client.force_login(viewer())

    page = client.get(reverse(PAGE))
    assert page.status_code == 200
    assert "<title>Dead letters" in page.content.decode()
    assert reverse(LIST) in page.content.decode()  # the list loads through HTMX
    assert subscriber.calls == []  # the page itself never calls Pub/Sub

    response = client.get(reverse(LIST), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "peek" in html or "peek" in page.content.decode()
    rows = html.split('data-message="')[1:]
    by_id = {row.split('"', 1)[0]: row for row in rows}
    assert set(by_id) == {"m-add", "m-card", "m-junk"}
    assert "[2, 3]" in by_id["m-add"] and original.result_id in by_id["m-add"]
    assert ">7<" in by_id["m-add"]  # delivery attempts, from Pub/Sub's attribute
    assert "2026-11-30 10:00:00" in by_id["m-add"]  # first published
    assert "alice" not in html  # the redacted route, and the message that is not ours
    assert "[redacted]" in by_id["m-card"] and "[redacted]" in by_id["m-junk"]
    assert "Not a task message" in by_id["m-junk"]
    assert 'type="checkbox"' not in html and "Replay selected" not in html  # view only
    assert subscriber.leased(sub_path()) == []


@pytest.mark.django_db
def test_payload_permission_shows_redacted_arguments(client, subscriber):
    dead(subscriber, task_message("charge_card", ["alice@example.com", 5]), "m-card")
    client.force_login(viewer("view_payload_taskexecution", "replay_deadletter"))
    html = client.get(reverse(LIST), headers={"HX-Request": "true"}).content.decode()
    assert "alice@example.com" in html
    assert 'type="checkbox"' in html and "Replay selected" in html


@pytest.mark.django_db
def test_missing_subscription_and_failures_are_sentences_not_errors(
    client, subscriber, monkeypatch
):
    del subscriber.messages[sub_path()]  # not provisioned yet
    client.force_login(viewer())
    html = client.get(reverse(LIST)).content.decode()  # without HTMX: the whole page
    assert "does not exist yet" in html and "<title>Dead letters" in html

    def broken():
        raise RuntimeError("no credentials at /secret/key.json")

    monkeypatch.setattr(deadletters, "open_subscriber", broken)
    response = client.get(reverse(LIST), headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "Reading the state of GCP failed" in response.content.decode()
    assert "/secret/key.json" not in response.content.decode()  # detail is for replayers


@pytest.mark.django_db
def test_permissions_are_checked_on_the_server(client, subscriber):
    dead(subscriber, task_message("add", [1, 2]), "m-1")
    client.force_login(staff_user("nobody"))
    assert client.get(reverse(PAGE)).status_code == 403
    assert client.get(reverse(LIST)).status_code == 403
    client.force_login(viewer())
    post = client.post(
        reverse(ACT),
        {
            "action": "discard",
            "message": "m-1",
            "confirm": "1",
            "subscription": sub_path().rsplit("/", 1)[-1],
        },
    )
    assert post.status_code == 403
    assert client.get(reverse(ACT)).status_code == 405  # nothing changes on GET
    assert subscriber.waiting(sub_path()) == ["m-1"]
    assert DeadLetter._meta.verbose_name_plural == "dead letters"


# --- Replay and discard ---------------------------------------------------------------------


def post(client, action, *ids, htmx=True, **extra):
    data = {
        "action": action,
        "message": list(ids),
        "subscription": sub_path().rsplit("/", 1)[-1],
        **extra,
    }
    return client.post(reverse(ACT), data, headers={"HX-Request": "true"} if htmx else {})


@pytest.mark.django_db
def test_replay_makes_a_linked_run_and_acknowledges_only_it(client, subscriber, fake_publisher):
    original = make_run("add", State.FAILED, attempts=7, message_id="77")
    dead(subscriber, task_message("add", [2, 3], task_id=original.result_id), "m-1")
    dead(subscriber, task_message("add", [4, 5]), "m-2")
    user = viewer("replay_deadletter")
    client.force_login(user)

    html = post(client, "replay", "m-1").content.decode()

    new = TaskExecution.objects.get(retry_of=original)
    assert (new.task_name, new.args, new.trigger, new.status) == (
        "add",
        [2, 3],
        Trigger.RETRY,
        State.READY,
    )
    assert f"replayed as run {new.result_id}" in html
    assert fake_publisher.published[0][1]["task_id"] == new.result_id  # published
    assert subscriber.waiting(sub_path()) == ["m-2"]  # m-1 acknowledged, m-2 given back
    assert subscriber.leased(sub_path()) == []
    original.refresh_from_db()
    assert original.gave_up and "Dead letter m-1 replayed as run" in original.status_detail
    entry = LogEntry.objects.get(object_id=str(new.pk))
    assert entry.action_flag == ADDITION and entry.user == user
    assert "m-1" in entry.change_message and original.result_id in entry.change_message
    assert "viewer" in new.timeline[0]["note"] and "m-1" in new.timeline[0]["note"]


@pytest.mark.django_db
def test_a_message_is_replayed_once_even_when_its_acknowledgement_is_lost(
    client, subscriber, fake_publisher
):
    from google.api_core.exceptions import ServiceUnavailable

    dead(subscriber, task_message("fails_until_fixed", ["k"], task_id="scheduled-x"), "m-1")
    client.force_login(viewer("replay_deadletter"))
    subscriber.fail_acknowledge = ServiceUnavailable("down")
    html = post(client, "replay", "m-1").content.decode()
    assert "Acknowledging it failed" in html
    assert subscriber.waiting(sub_path()) == ["m-1"]
    subscriber.messages[sub_path()][0].ack_id = ""  # its lease ran out

    subscriber.fail_acknowledge = None
    html = post(client, "replay", "m-1").content.decode()

    (run,) = TaskExecution.objects.filter(task_name="fails_until_fixed")
    assert run.retry_of is None  # a scheduled message names no recorded run
    assert f"was replayed before, as run {run.result_id}" in html
    assert subscriber.waiting(sub_path()) == []
    assert len(fake_publisher.published) == 1


@pytest.mark.django_db(transaction=True)
def test_two_replays_racing_for_one_message_make_one_run(subscriber, fake_publisher, monkeypatch):
    """Both passed the "replayed before?" look before either wrote: the database decides."""
    original = make_run("add", State.FAILED, attempts=7, message_id="77")
    dead(subscriber, task_message("add", [1, 1], task_id=original.result_id), "m-1")
    dead(subscriber, task_message("add", [2, 2], task_id="not-recorded"), "m-2")
    source = deadletters.sources()[0]
    letters = {letter.message_id: letter for letter in deadletters.peek(subscriber, source)}
    first = {key: deadletters.replay(letter, source) for key, letter in letters.items()}
    assert all(outcome.done == "replayed" for outcome in first.values())

    real_filter = TaskExecution.objects.filter
    monkeypatch.setattr(
        TaskExecution.objects,
        "filter",
        lambda *a, **kw: (
            real_filter(pk=-1)
            if set(kw) == {"result_id"}
            and len(kw["result_id"]) == 36
            and kw["result_id"] in {o.run.result_id for o in first.values()}
            else real_filter(*a, **kw)
        ),
    )
    monkeypatch.setattr(deadletters, "live_retry_refusal", lambda original: "")
    again = {key: deadletters.replay(letter, source) for key, letter in letters.items()}

    assert again["m-1"].done == "" and "changed" in again["m-1"].reason  # original guards
    assert again["m-2"].done == "already replayed"  # the run's unique result id guards
    assert TaskExecution.objects.filter(trigger=Trigger.RETRY).count() == 2
    assert len(fake_publisher.published) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("recorded", [True, False], ids=["original", "no-original"])
def test_two_threads_replaying_one_message_at_once_make_one_run(subscriber, monkeypatch, recorded):
    """Two staff whose fresh pulls both held the message (a lease ran out in between): both
    threads pass every check before either writes, then race in the database."""
    import threading

    from django.db import connection

    from gyrinx_tasks import clients as client_factory
    from tests.helpers import FakePublisher

    publisher = FakePublisher()
    monkeypatch.setattr(client_factory, "shared_publisher", lambda client_options=None: publisher)
    original = make_run("add", State.FAILED, attempts=7, message_id="77")
    task_id = original.result_id if recorded else "not-recorded"
    dead(subscriber, task_message("add", [1, 1], task_id=task_id), "m-1")
    source = deadletters.sources()[0]
    (letter,) = deadletters.peek(subscriber, source)
    both_checked = threading.Barrier(2, timeout=30)
    real = deadletters.live_retry_refusal

    def checked(run):
        reason = real(run)
        both_checked.wait()
        return reason

    monkeypatch.setattr(deadletters, "live_retry_refusal", checked)
    if not recorded:  # no original to look up: meet before the transaction instead
        real_route = deadletters.route_refusal

        def route_checked(name):
            answer = real_route(name)
            both_checked.wait()
            return answer

        monkeypatch.setattr(deadletters, "route_refusal", route_checked)
    outcomes = []

    def replay():
        try:
            outcomes.append(deadletters.replay(letter, source))
        finally:
            connection.close()

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o.done for o in outcomes) == sorted(
        ["replayed", "" if recorded else "already replayed"]
    ), [(o.done, o.reason) for o in outcomes]
    assert TaskExecution.objects.filter(trigger=Trigger.RETRY).count() == 1
    assert len(publisher.published) == 1


@pytest.mark.django_db
def test_discard_acknowledges_without_a_run_and_is_audited(client, subscriber):
    dead(subscriber, b"not ours", "m-junk")
    dead(subscriber, task_message("add", [1, 2]), "m-keep")
    client.force_login(viewer("replay_deadletter"))
    html = post(client, "replay", "m-junk").content.decode()
    assert "It can only be discarded" in html
    assert subscriber.waiting(sub_path()) == ["m-junk", "m-keep"]

    confirm = post(client, "discard", "m-junk").content.decode()
    assert "Discard 1 dead letter?" in confirm and "cannot be undone" in confirm
    assert subscriber.waiting(sub_path()) == ["m-junk", "m-keep"]  # asking changes nothing
    assert "<title>" in post(client, "discard", "m-junk", htmx=False).content.decode()

    response = post(client, "discard", "m-junk", htmx=False, confirm="1")

    assert response.status_code == 302
    assert subscriber.waiting(sub_path()) == ["m-keep"]
    assert not TaskExecution.objects.exists()
    entry = LogEntry.objects.get()
    assert entry.action_flag == DELETION and "m-junk" in entry.change_message


@pytest.mark.django_db
def test_refused_and_vanished_messages_are_left_alone(client, subscriber, fake_publisher):
    dead(subscriber, task_message("add", [1, 2]), "m-1")
    dead(subscriber, task_message("gone_task", [1]), "m-2")
    KillSwitch.objects.create(task_name="add", enabled=False)
    client.force_login(viewer("replay_deadletter"))

    html = post(client, "replay", "m-1", "m-2", "m-vanished").content.decode()

    assert "Message m-1: left alone. Kill switch for" in html
    assert "no longer in TASKS_REGISTRY" in html
    assert "Message m-vanished: left alone. A fresh pull did not return it" in html
    assert subscriber.waiting(sub_path()) == ["m-1", "m-2"]
    assert subscriber.leased(sub_path()) == []
    assert not TaskExecution.objects.exists() and not LogEntry.objects.exists()


@pytest.mark.django_db
def test_one_failing_replay_stops_no_other_and_the_made_runs_are_audited(
    client, subscriber, fake_publisher, monkeypatch
):
    dead(subscriber, task_message("add", [1, 2], task_id="a"), "m-1")
    dead(subscriber, task_message("add", [3, 4], task_id="b"), "m-2")
    real = deadletters.replay

    def flaky_replay(letter, source, user=None):
        if letter.message_id == "m-1":
            raise RuntimeError("database went away")
        return real(letter, source, user)

    monkeypatch.setattr(deadletters, "replay", flaky_replay)
    client.force_login(viewer("replay_deadletter"))
    html = post(client, "replay", "m-1", "m-2").content.decode()
    assert "Message m-1: left alone. Replay failed (RuntimeError)" in html
    (run,) = TaskExecution.objects.all()
    assert run.args == [3, 4] and LogEntry.objects.get().object_id == str(run.pk)
    assert subscriber.waiting(sub_path()) == ["m-1"] and subscriber.leased(sub_path()) == []


@pytest.mark.django_db
def test_an_original_already_retried_is_not_run_twice(client, subscriber, fake_publisher):
    original = make_run("add", State.FAILED, attempts=7, message_id="77")
    make_run("add", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=original)
    dead(subscriber, task_message("add", [1, 2], task_id=original.result_id), "m-1")
    client.force_login(viewer("replay_deadletter"))
    html = post(client, "replay", "m-1").content.decode()
    assert "already retried" in html and "Discard this dead letter instead" in html
    assert TaskExecution.objects.count() == 2
    assert subscriber.waiting(sub_path()) == ["m-1"]


@pytest.mark.django_db
def test_bad_posts_are_sentences(client, subscriber):
    client.force_login(viewer("replay_deadletter"))
    assert "Choose Replay or Discard" in post(client, "delete", "m").content.decode()
    assert "Select one or more" in post(client, "replay").content.decode()
    html = client.post(
        reverse(ACT),
        {"action": "replay", "message": "m", "subscription": "someone-elses"},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert "not one the registry names" in html
    assert not [call for call in subscriber.calls if call[0] != "pull"]


# --- On the real emulator -------------------------------------------------------------------


def emulator_clients():
    return clients.publisher_client(), clients.subscriber_client()


@pytest.mark.emulator
def test_emulator_gives_back_a_pulled_message_and_keeps_acknowledged_ones_gone(pubsub_emulator):
    """The google-cloud-pubsub calls the page relies on, as the emulator answers them."""
    publisher, subscriber = emulator_clients()
    name = "peek" + secrets.token_hex(4)
    topic, sub = pubsub_emulator.topic_path(name), pubsub_emulator.subscription_path(name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "ack_deadline_seconds": 60}
    )
    try:
        ids = {
            publisher.publish(topic, task_message("add", [n, n])).result(timeout=30)
            for n in range(3)
        }
        source = deadletters.Source(topic, sub, ())
        for _ in range(2):  # looking twice sees the same messages: nothing was consumed
            got = deadletters.pull(subscriber, sub)
            assert {m.message.message_id for m in got} == ids
            deadletters.give_back(subscriber, sub, [m.ack_id for m in got])
        received = deadletters.pull(subscriber, sub)
        deadletters.give_back(subscriber, sub, [m.ack_id for m in received[1:]])
        deadletters.acknowledge(subscriber, sub, [received[0].ack_id])
        left = deadletters.pull(subscriber, sub)
        assert {m.message.message_id for m in left} == ids - {received[0].message.message_id}
        deadletters.give_back(subscriber, sub, [m.ack_id for m in left])
        assert source.short_name == name
        # An empty pull ends within the wait, as no messages, not as an error.
        deadletters.acknowledge(
            subscriber, sub, [m.ack_id for m in deadletters.pull(subscriber, sub)]
        )
        started = time.monotonic()
        assert deadletters.pull(subscriber, sub) == []
        assert time.monotonic() - started < deadletters.PULL_WAIT + 2
    finally:
        subscriber.delete_subscription(subscription=sub)
        publisher.delete_topic(topic=topic)
        subscriber.close()
        publisher.stop()


@pytest.mark.emulator
def test_dead_letter_subscription_is_provisioned_and_reported_orphaned(
    dl_registry, settings, pubsub_emulator
):
    settings.TASKS_ENVIRONMENT = "dl" + secrets.token_hex(4)
    config = ProvisioningConfig.from_settings(emulator=True)
    publisher, subscriber = emulator_clients()
    try:
        out = io.StringIO()
        call_command("tasks_provision", "--dry-run", stdout=out)
        name = f"{settings.TASKS_ENVIRONMENT}--gyrinx.tasks--dead-letters--gyrinx-test-dead-letters"
        assert f"create     {name}" in out.getvalue()  # the command's plan shows it
        with build_plan(publisher, subscriber, config=config, parts=["pubsub"]) as plan:
            apply_plan(plan)
        wanted = dead_letter_subscription_path(
            config.project, config.topic_path(deadletter_tasks.DEAD_LETTER_TOPIC)
        )
        made = subscriber.get_subscription(subscription=wanted)
        assert made.topic == config.topic_path(deadletter_tasks.DEAD_LETTER_TOPIC)
        assert not made.push_config.push_endpoint  # a pull subscription
        routes = [replace(r, dead_letter_topic=None) for r in registry.get_routes()]
        with build_plan(
            publisher, subscriber, config=config, routes=routes, parts=["pubsub"]
        ) as plan:
            verbs = {a.name: a.verb for a in plan.actions if a.kind == Kind.SUBSCRIPTION}
            lines = "\n".join(plan.lines())
        assert verbs[wanted] == Verb.ORPHAN  # kept, like the others: it holds messages
        assert "Pub/Sub subscriptions:" in lines
    finally:
        for sub in subscriber.list_subscriptions(project=f"projects/{config.project}"):
            if sub.name.split("/")[-1].startswith(settings.TASKS_ENVIRONMENT):
                subscriber.delete_subscription(subscription=sub.name)
        subscriber.close()
        publisher.stop()


def wait_for(condition, timeout=90.0, what="it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout}s")


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_end_to_end_a_failing_task_is_dead_lettered_listed_and_replayed(
    dl_registry, settings, pubsub_emulator, live_server, client
):
    """The emulator applies the route's dead-letter policy itself (5 delivery attempts)."""
    settings.TASKS_ENVIRONMENT = "dle2e" + secrets.token_hex(4)
    settings.TASKS_VERIFY_OIDC = False  # the emulator sends no token
    settings.TASKS_EMULATOR_PUSH_ENDPOINT = f"{live_server.url}/tasks/pubsub/"
    config = ProvisioningConfig.from_settings(emulator=True)
    publisher, subscriber = emulator_clients()
    key = "e2e" + secrets.token_hex(3)
    deadletter_tasks.BROKEN.add(key)
    try:
        with build_plan(publisher, subscriber, config=config, parts=["pubsub"]) as plan:
            apply_plan(plan)
        result = deadletter_tasks.fails_until_fixed.enqueue(key)
        source = deadletters.sources()[0]
        letter = wait_for(
            lambda: next(iter(deadletters.peek(subscriber, source)), None), what="dead-lettering"
        )
        original = TaskExecution.objects.get(result_id=result.id)
        assert (letter.task_name, letter.args, letter.delivery_attempts) == (
            "fails_until_fixed",
            [key],
            5,
        )
        assert letter.route.name == "fails_until_fixed" and letter.original == original
        assert original.status == State.FAILED and original.attempts == 5

        client.force_login(staff_user("ops", "view_deadletter", "replay_deadletter"))
        html = client.get(reverse(LIST), headers={"HX-Request": "true"}).content.decode()
        assert f'data-message="{letter.message_id}"' in html and key in html
        deadletter_tasks.BROKEN.discard(key)  # the bug is fixed; replay
        html = client.post(
            reverse(ACT),
            {"action": "replay", "message": letter.message_id, "subscription": source.short_name},
            headers={"HX-Request": "true"},
        ).content.decode()
        assert "replayed as run" in html

        new = TaskExecution.objects.get(retry_of=original)
        wait_for(
            lambda: TaskExecution.objects.filter(pk=new.pk, status=State.SUCCESSFUL).exists(),
            what="the replay's run",
        )
        new.refresh_from_db()
        assert new.return_value == f"fixed {key}" and new.attempts == 1
        assert deadletters.peek(subscriber, source) == []  # acknowledged
    finally:
        deadletter_tasks.BROKEN.discard(key)
        for sub in subscriber.list_subscriptions(project=f"projects/{config.project}"):
            if sub.name.split("/")[-1].startswith(settings.TASKS_ENVIRONMENT):
                subscriber.delete_subscription(subscription=sub.name)
        subscriber.close()
        publisher.stop()
