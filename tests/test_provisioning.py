"""Provisioning's Pub/Sub half against the real emulator, the command, and start-up mode.

Every test gets its own TASKS_ENVIRONMENT, so its topics and subscriptions have names no
other test uses on the shared emulator; they are deleted afterwards.
"""

import io
import json
import logging
import threading
import uuid
from dataclasses import replace

import pytest
from django.core.management import CommandError, call_command

from gyrinx_tasks import clients, startup
from gyrinx_tasks.provisioning import (
    EMULATOR_PUSH_ENDPOINT,
    FieldChange,
    Kind,
    ProvisioningConfig,
    Verb,
    apply_plan,
    build_plan,
)
from gyrinx_tasks.registry import get_route, get_routes
from gyrinx_tasks.scheduling.firing import scheduled_message
from gyrinx_tasks.scheduling.jobs import run_now

pytestmark = pytest.mark.emulator

# Nothing listens on the discard port: pushes fail quietly instead of reaching a server.
DEAD_ENDPOINT = "http://127.0.0.1:9/tasks/pubsub/"


@pytest.fixture
def pubsub(pubsub_emulator):
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    yield publisher, subscriber
    subscriber.close()
    publisher.stop()


@pytest.fixture
def env(settings, pubsub, pubsub_emulator):
    """A fresh environment name; its resources are deleted after the test."""
    name = f"p{uuid.uuid4().hex[:10]}"
    settings.TASKS_ENVIRONMENT = name
    settings.TASKS_EMULATOR_PUSH_ENDPOINT = DEAD_ENDPOINT
    yield name
    publisher, subscriber = pubsub
    project = f"projects/{pubsub_emulator.project}"
    for sub in subscriber.list_subscriptions(request={"project": project}):
        if sub.name.split("/")[-1].startswith(name):
            subscriber.delete_subscription(request={"subscription": sub.name})
    for topic in publisher.list_topics(request={"project": project}):
        if topic.name.split("/")[-1].startswith(name):
            publisher.delete_topic(request={"topic": topic.name})


def ours(pubsub, env, project="test-project"):
    """This environment's topic and subscription ids on the emulator."""
    publisher, subscriber = pubsub
    topics = [t.name.split("/")[-1] for t in publisher.list_topics(
        request={"project": f"projects/{project}"})]
    subs = [s.name.split("/")[-1] for s in subscriber.list_subscriptions(
        request={"project": f"projects/{project}"})]
    return [t for t in topics if t.startswith(env)], [s for s in subs if s.startswith(env)]


def read_subscription(pubsub, route):
    return pubsub[1].get_subscription(
        request={"subscription": f"projects/test-project/subscriptions/{route.subscription_name}"})


def provision(*args):
    out = io.StringIO()
    call_command("tasks_provision", *args, stdout=out)
    return out.getvalue()


def test_dry_run_prints_the_plan_and_creates_nothing(env, pubsub):
    output = provision("--dry-run")

    count = len(get_routes())
    add = get_route("add")
    assert f"create     {add.topic_name}\n" in output
    assert f"create     {add.subscription_name}\n" in output
    assert "Pub/Sub topics:" in output and "Pub/Sub subscriptions:" in output
    assert f"Summary: {2 * count} to create, 0 to update, 0 to delete, 0 unchanged." in output
    assert "run `manage.py tasks_scheduler` to fire scheduled routes locally" in output
    assert "Dry run: nothing was changed." in output
    assert ours(pubsub, env) == ([], [])


def test_apply_creates_topics_and_push_subscriptions(env, pubsub):
    output = provision()

    routes = get_routes()
    topics, subs = ours(pubsub, env)
    assert sorted(topics) == sorted(r.topic_name for r in routes)
    assert sorted(subs) == sorted(r.subscription_name for r in routes)
    assert f"  topic {get_route('add').topic_name}: created\n" in output
    explode = get_route("explode")
    sub = read_subscription(pubsub, explode)
    assert sub.topic == f"projects/test-project/topics/{explode.topic_name}"
    assert sub.push_config.push_endpoint == DEAD_ENDPOINT
    assert "oidc_token" not in sub.push_config  # the emulator sends no token
    assert sub.ack_deadline_seconds == 300
    assert sub.retry_policy.minimum_backoff.total_seconds() == 1
    assert sub.retry_policy.maximum_backoff.total_seconds() == 2
    assert "dead_letter_policy" not in sub


def test_second_apply_reports_everything_unchanged(env, pubsub):
    provision()
    output = provision()

    count = len(get_routes())
    assert f"Summary: 0 to create, 0 to update, 0 to delete, {2 * count} unchanged." in output
    assert "Nothing to change." in output
    assert ": created" not in output


def test_changed_ack_deadline_is_an_update_naming_the_field(env, pubsub):
    add = get_route("add")
    routes = [replace(r, ack_deadline=60) if r.name == "add" else r for r in get_routes()]
    apply_plan(build_plan(routes=routes))
    assert read_subscription(pubsub, add).ack_deadline_seconds == 60

    output = provision("--dry-run")
    assert f"update     {add.subscription_name} (ack_deadline_seconds: 60 -> 300)" in output
    plan = build_plan()
    [update] = [a for a in plan.actions if a.verb == Verb.UPDATE]
    assert (update.kind, update.short_name) == (Kind.SUBSCRIPTION, add.subscription_name)
    assert update.changes == [FieldChange("ack_deadline_seconds", "60", "300")]
    assert update.update_mask == ["ack_deadline_seconds"]

    apply_plan(plan)
    assert read_subscription(pubsub, add).ack_deadline_seconds == 300
    assert not build_plan().has_changes


def test_dead_letter_policy_is_set_and_cleared(env, pubsub):
    dead_letter = f"{env}--dead-letters"
    routes = [replace(r, dead_letter_topic=dead_letter, max_delivery_attempts=7)
              if r.name == "add" else r for r in get_routes()]
    apply_plan(build_plan(routes=routes))

    add = get_route("add")
    policy = read_subscription(pubsub, add).dead_letter_policy
    assert policy.dead_letter_topic == f"projects/test-project/topics/{dead_letter}"
    assert policy.max_delivery_attempts == 7
    assert dead_letter in ours(pubsub, env)[0]  # created before the subscription needed it

    plan = build_plan()  # the registry without the dead-letter topic
    [update] = [a for a in plan.actions if a.verb == Verb.UPDATE]
    assert [str(c) for c in update.changes] == [
        f"dead_letter_policy.dead_letter_topic: projects/test-project/topics/{dead_letter} "
        "-> (unset)",
        "dead_letter_policy.max_delivery_attempts: 7 -> (unset)",
    ]
    apply_plan(plan)
    assert "dead_letter_policy" not in read_subscription(pubsub, add)


def test_orphans_are_reported_and_kept(env, pubsub, pubsub_emulator):
    publisher, subscriber = pubsub
    orphan_topic = pubsub_emulator.topic_path(f"{env}--gyrinx.tasks--tests.tasks.gone")
    orphan_sub = pubsub_emulator.subscription_path(f"{env}--gyrinx.tasks--tests.tasks.gone-sub")
    foreign = pubsub_emulator.topic_path(f"x{env}--gyrinx.tasks--tests.tasks.gone")
    publisher.create_topic(request={"name": orphan_topic})
    publisher.create_topic(request={"name": foreign})
    subscriber.create_subscription(request={"name": orphan_sub, "topic": orphan_topic})

    plan = build_plan()
    orphans = {a.name: a for a in plan.actions if a.verb == Verb.ORPHAN}
    assert set(orphans) == {orphan_topic, orphan_sub}  # never another environment's
    assert "kept" in orphans[orphan_sub].note and "undelivered" in orphans[orphan_sub].note
    assert plan.summary().endswith(", 2 orphaned (kept).")

    output = provision()
    assert "orphan     " in output
    topics, subs = ours(pubsub, env)
    assert orphan_topic.split("/")[-1] in topics and orphan_sub.split("/")[-1] in subs
    publisher.delete_topic(request={"topic": foreign})


def test_resources_another_instance_created_meanwhile_are_converged(env, pubsub):
    plan = build_plan()  # says: create everything
    add = get_route("add")
    publisher, subscriber = pubsub
    # Another instance, with an older registry, creates two of them first.
    topic = f"projects/test-project/topics/{add.topic_name}"
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={
        "name": f"projects/test-project/subscriptions/{add.subscription_name}",
        "topic": topic, "ack_deadline_seconds": 42,
        "push_config": {"push_endpoint": DEAD_ENDPOINT},
        "retry_policy": {"minimum_backoff": {"seconds": 10}, "maximum_backoff": {"seconds": 600}},
    })

    apply_plan(plan)

    results = {a.short_name: a.result for a in plan.actions}
    assert results[add.topic_name] == "already existed; up to date"
    assert results[add.subscription_name] == (
        "already existed; updated ack_deadline_seconds: 42 -> 300")
    assert read_subscription(pubsub, add).ack_deadline_seconds == 300
    assert not build_plan().has_changes


def test_instances_provisioning_at_the_same_time_both_succeed(env, pubsub):
    plans = [build_plan(), build_plan()]
    errors = []

    def apply(plan):
        try:
            apply_plan(plan)
        except Exception as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=apply, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert all(a.result for plan in plans for a in plan.actions)
    assert not build_plan().has_changes


def test_subscription_on_another_topic_is_a_conflict_left_alone(env, pubsub):
    add = get_route("add")
    publisher, subscriber = pubsub
    other = f"projects/test-project/topics/{env}-elsewhere"
    publisher.create_topic(request={"name": other})
    subscriber.create_subscription(request={
        "name": f"projects/test-project/subscriptions/{add.subscription_name}", "topic": other})

    plan = build_plan()
    [conflict] = [a for a in plan.actions if a.verb == Verb.CONFLICT]
    assert conflict.short_name == add.subscription_name
    assert "cannot change topic" in conflict.note and "Delete it by hand" in conflict.note
    apply_plan(plan)
    assert read_subscription(pubsub, add).topic == other


def test_production_push_config_carries_the_oidc_token(env, pubsub, settings):
    config = ProvisioningConfig.from_settings(emulator=False)
    assert config.service_account == settings.TASKS_SERVICE_ACCOUNT
    assert config.audience == "https://tasks-test.example.run.app/tasks/pubsub/"
    add = get_route("add")

    apply_plan(build_plan(config=config, routes=[add], parts=["pubsub"]))

    sub = read_subscription(pubsub, add)
    assert sub.push_config.push_endpoint == "https://tasks-test.example.run.app/tasks/pubsub/"
    assert sub.push_config.oidc_token.service_account_email == settings.TASKS_SERVICE_ACCOUNT
    assert sub.push_config.oidc_token.audience == config.audience
    assert "expiration_policy" in sub and not sub.expiration_policy.ttl  # never expires
    assert not build_plan(config=config, routes=[add], parts=["pubsub"]).has_changes


def test_run_now_without_a_scheduler_publishes_the_scheduled_message(env, pubsub):
    route = get_route("nightly_cleanup")
    apply_plan(build_plan(routes=[route]))
    publisher, subscriber = pubsub
    probe = f"projects/test-project/subscriptions/{env}-probe"
    subscriber.create_subscription(request={
        "name": probe, "topic": f"projects/test-project/topics/{route.topic_name}"})

    result = run_now(route)

    assert result.via == "local"
    response = subscriber.pull(request={"subscription": probe, "max_messages": 5}, timeout=30)
    [received] = response.received_messages
    assert json.loads(received.message.data) == scheduled_message(route)
    assert received.message.attributes["trigger"] == "run_now"
    assert received.message.message_id == result.ident


def test_emulator_push_endpoint_defaults_to_runserver_and_can_be_overridden(settings, env):
    del settings.TASKS_EMULATOR_PUSH_ENDPOINT
    # tests/settings.py has an https:// service URL: a deployed service, never pushed to.
    assert ProvisioningConfig.from_settings().push_endpoint == EMULATOR_PUSH_ENDPOINT
    assert EMULATOR_PUSH_ENDPOINT == "http://127.0.0.1:8000/tasks/pubsub/"
    settings.CLOUD_RUN_SERVICE_URL = "http://127.0.0.1:8123"  # a local server: used
    assert ProvisioningConfig.from_settings().push_endpoint == (
        "http://127.0.0.1:8123/tasks/pubsub/")
    settings.TASKS_EMULATOR_PUSH_ENDPOINT = "http://127.0.0.1:8001/tasks/pubsub/"
    config = ProvisioningConfig.from_settings()
    assert (config.push_endpoint, config.service_account) == (
        "http://127.0.0.1:8001/tasks/pubsub/", "")
    output = provision("--dry-run", "--push-endpoint", "http://127.0.0.1:8002/tasks/pubsub/")
    assert "push endpoint http://127.0.0.1:8002/tasks/pubsub/" in output


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"CLOUD_RUN_SERVICE_URL": ""}, "CLOUD_RUN_SERVICE_URL is not set"),
    ({"CLOUD_RUN_SERVICE_URL": "http://insecure.example"}, "is not an https:// URL"),
    ({"TASKS_SERVICE_ACCOUNT": ""}, "TASKS_SERVICE_ACCOUNT is not set"),
    ({"GCP_PROJECT_ID": "", "TASKS": {"default": {
        "BACKEND": "gyrinx_tasks.backend.PubSubBackend"}}}, "GCP_PROJECT_ID is not set"),
])
def test_missing_settings_outside_the_emulator_are_command_errors(
        settings, monkeypatch, overrides, expected):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    for name, value in overrides.items():
        setattr(settings, name, value)
    with pytest.raises(CommandError) as caught:
        provision("--dry-run")
    message = str(caught.value)
    assert expected in message
    assert message.rstrip().endswith((".", ")"))  # whole sentences that name the fix
    assert "Set " in message


# --- start-up mode --------------------------------------------------------------------------

CLOUD_RUN = {"K_SERVICE": "web"}


def test_startup_runs_only_when_opted_in_on_cloud_run_outside_tests_and_debug(settings):
    no_pytest: dict = {}
    settings.TASKS_PROVISION_ON_STARTUP = False
    assert "TASKS_PROVISION_ON_STARTUP is off" in startup.skip_reason(CLOUD_RUN, no_pytest)
    settings.TASKS_PROVISION_ON_STARTUP = True
    assert "K_SERVICE" in startup.skip_reason({}, no_pytest)
    assert startup.skip_reason(CLOUD_RUN, {"pytest": object()}) == "running under tests"
    settings.DEBUG = True
    assert startup.skip_reason(CLOUD_RUN, no_pytest) == "DEBUG is on"
    settings.DEBUG = False
    assert startup.skip_reason(CLOUD_RUN, no_pytest) == ""
    settings.TESTING = True
    assert startup.skip_reason(CLOUD_RUN, no_pytest) == "running under tests"


@pytest.mark.django_db  # request_started also runs Django's close_old_connections
def test_startup_never_runs_under_tests(settings, monkeypatch):
    from django.core.signals import request_started

    settings.TASKS_PROVISION_ON_STARTUP = True
    monkeypatch.setenv("K_SERVICE", "web")
    started = []
    monkeypatch.setattr(startup, "start_in_background", lambda: started.append(1))
    startup.maybe_provision_on_startup()
    request_started.send(sender=None)  # not even a request starts it
    assert started == []


def test_startup_runs_in_the_background_and_never_raises(caplog):
    release, finished = threading.Event(), threading.Event()
    hook_calls = []
    monkey_hook = threading.excepthook
    threading.excepthook = hook_calls.append
    try:
        def slow_failure():
            release.wait(10)
            finished.set()
            raise RuntimeError("PermissionDenied: pubsub.topics.create")

        with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
            thread = startup.start_in_background(slow_failure)
            assert thread.is_alive() and thread.daemon  # start-up did not wait for it
            release.set()
            thread.join(10)
    finally:
        threading.excepthook = monkey_hook
    assert finished.is_set() and not thread.is_alive()
    assert hook_calls == []  # the exception never escaped the thread
    assert "Provisioning on start-up failed" in caplog.text
    assert "pubsub.topics.create" in caplog.text


def test_startup_provisions_for_real(env, pubsub, caplog):
    with caplog.at_level(logging.INFO, logger="gyrinx_tasks"):
        assert startup.run_safely() is True
    count = len(get_routes())
    assert f"{2 * count} to create" in caplog.text
    assert not build_plan().has_changes


def test_a_plan_closes_only_the_clients_it_built(env, pubsub):
    publisher, subscriber = pubsub
    with build_plan(subscriber=subscriber) as plan:
        built = plan.clients.publisher
        assert plan.clients.owned == {"publisher"}
    assert plan.clients.publisher is None
    with pytest.raises(ValueError, match="closed channel"):
        list(built.list_topics(request={"project": "projects/test-project"}))
    list(subscriber.list_subscriptions(request={"project": "projects/test-project"}))


def test_missing_google_credentials_are_a_command_error(monkeypatch):
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setattr(clients, "publisher_client", no_credentials)
    with pytest.raises(CommandError, match="needs Google credentials.*application-default login"):
        provision("--dry-run")
