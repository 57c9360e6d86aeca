"""`tasks_provision --format terraform`: the plan's desired resources as Terraform JSON.

The main test reads the plan the usual way (the real Pub/Sub emulator and the Cloud Scheduler
gRPC fake, in a fresh environment, so every resource is a `create`) and checks the Terraform
document against it resource by resource and field by field, translating each Terraform block
back into the plan's field names with code independent of gyrinx_tasks/provisioning/terraform.py.
"""

import base64
import io
import json
import re
import uuid
from dataclasses import replace

import pytest
from django.core.management import CommandError, call_command

from gyrinx_tasks import clients
from gyrinx_tasks.provisioning import (
    Kind,
    ProvisioningConfig,
    Verb,
    build_plan,
    desired_state,
    terraform_config,
)
from gyrinx_tasks.provisioning.terraform import labels
from gyrinx_tasks.registry import get_route, get_routes

pytest_plugins = ["tests.fakes.scheduler"]  # the scheduler_fake fixture

ENDPOINT = "https://tasks-test.example.run.app/tasks/pubsub/"
INVOKER = "pubsub-invoker@test-project.iam.gserviceaccount.com"
# Terraform reads every JSON string as a template; these must come out literally.
AUDIENCE = "https://tasks-test.example.run.app/aud?x=${not_a_var}&y=%{not_a_directive}"
CONFIG = ProvisioningConfig(project="test-project", location="europe-west2",
                            push_endpoint=ENDPOINT, service_account=INVOKER, audience=AUDIENCE)
TYPES = {Kind.TOPIC: "google_pubsub_topic", Kind.SUBSCRIPTION: "google_pubsub_subscription",
         Kind.SCHEDULER_JOB: "google_cloud_scheduler_job"}
REFERENCE = re.compile(r"\$\{google_pubsub_topic\.(?P<label>[A-Za-z0-9_-]+)\.id\}")


@pytest.fixture
def env(settings):
    name = f"t{uuid.uuid4().hex[:10]}"
    settings.TASKS_ENVIRONMENT = name
    return name


def routes_with_dead_letters():
    """The test registry, two of its routes given dead-letter topics: one in the same
    project, one in another."""
    dead_letters = {"flaky": {"dead_letter_topic": "flaky-dead", "max_delivery_attempts": 7},
                    "explode": {"dead_letter_topic": "projects/other-project/topics/dead"}}
    return [replace(route, **dead_letters.get(route.name, {})) for route in get_routes()]


def literal(value):
    return value.replace("$${", "${").replace("%%{", "%{")


class Document:
    """A Terraform JSON document read back the way Terraform reads it."""

    def __init__(self, doc):
        self.resources = doc["resource"]

    def topic_path(self, value):
        match = REFERENCE.fullmatch(value)
        if match is None:
            return literal(value)
        topic = self.resources["google_pubsub_topic"][match["label"]]
        return f"projects/{topic['project']}/topics/{topic['name']}"

    def by_path(self):
        """(resource type, full resource path) -> the block."""
        found = {}
        for rtype, blocks in self.resources.items():
            for block in blocks.values():
                project, name = block["project"], literal(block["name"])
                path = {
                    "google_pubsub_topic": f"projects/{project}/topics/{name}",
                    "google_pubsub_subscription": f"projects/{project}/subscriptions/{name}",
                    "google_cloud_scheduler_job":
                        f"projects/{project}/locations/{block.get('region')}/jobs/{name}",
                }[rtype]
                found[(rtype, path)] = block
        return found

    def plan_fields(self, rtype, block):
        """The block in the plan's terms: the flattened fields of Desired.fields."""
        if rtype == "google_pubsub_topic":
            return {}
        if rtype == "google_pubsub_subscription":
            fields = {"topic": self.topic_path(block["topic"])}
            push = block.get("push_config", {})
            if push:
                fields["push_config.push_endpoint"] = literal(push["push_endpoint"])
            if "oidc_token" in push:
                token = push["oidc_token"]
                fields["push_config.oidc_token.service_account_email"] = literal(
                    token["service_account_email"])
                fields["push_config.oidc_token.audience"] = literal(token["audience"])
            fields["ack_deadline_seconds"] = str(block["ack_deadline_seconds"])
            if "retry_policy" in block:  # not on the dead-letter (pull) subscriptions
                retry = block["retry_policy"]
                fields["retry_policy.minimum_backoff"] = retry["minimum_backoff"]
                fields["retry_policy.maximum_backoff"] = retry["maximum_backoff"]
            if "dead_letter_policy" in block:
                policy = block["dead_letter_policy"]
                fields["dead_letter_policy.dead_letter_topic"] = self.topic_path(
                    policy["dead_letter_topic"])
                fields["dead_letter_policy.max_delivery_attempts"] = str(
                    policy["max_delivery_attempts"])
            if "expiration_policy" in block:
                ttl = block["expiration_policy"]["ttl"]
                fields["expiration_policy.ttl"] = ttl or "never"  # "" is never, in Terraform
            return fields
        target, retry = block["pubsub_target"], block["retry_config"]
        data = json.loads(base64.b64decode(target["data"], validate=True))
        return {
            "description": literal(block["description"]),
            "schedule": literal(block["schedule"]),
            "time_zone": literal(block["time_zone"]),
            "pubsub_target.topic_name": self.topic_path(target["topic_name"]),
            "pubsub_target.data": json.dumps(data, sort_keys=True, separators=(",", ":")),
            "pubsub_target.attributes": json.dumps(
                {k: literal(v) for k, v in target["attributes"].items()}, sort_keys=True),
            "retry_config.retry_count": str(retry["retry_count"]),
            "retry_config.min_backoff_duration": retry["min_backoff_duration"],
            "retry_config.max_backoff_duration": retry["max_backoff_duration"],
            "retry_config.max_doublings": str(retry["max_doublings"]),
            "retry_config.max_retry_duration": retry["max_retry_duration"],
        }


def call(*args):
    out = io.StringIO()
    call_command("tasks_provision", "--format", "terraform", *args, stdout=out)
    return out.getvalue()


@pytest.mark.emulator
def test_the_document_holds_exactly_the_plans_resources_field_by_field(
        env, pubsub_emulator, scheduler_fake):
    routes = routes_with_dead_letters()
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    try:
        with build_plan(publisher, subscriber, scheduler_fake.client, config=CONFIG,
                        routes=routes) as plan:
            actions = plan.actions
    finally:
        subscriber.close()
        publisher.stop()
    assert {action.verb for action in actions} == {Verb.CREATE}  # a fresh environment
    doc = Document(json.loads(json.dumps(terraform_config(CONFIG, routes))))
    blocks = doc.by_path()

    for action in actions:
        block = blocks.pop((TYPES[action.kind], action.name))
        assert doc.plan_fields(TYPES[action.kind], block) == action.desired.fields, action.name
    assert blocks == {}  # nothing the plan does not hold
    kinds = {action.kind for action in actions}
    assert kinds == {Kind.TOPIC, Kind.SUBSCRIPTION, Kind.SCHEDULER_JOB}
    assert "projects/other-project/topics/dead" in {a.name for a in actions}
    # A pull subscription of ours on each dead-letter topic, in the plan and the document.
    pulls = {a.name: a.desired.fields["topic"] for a in actions
             if a.kind == Kind.SUBSCRIPTION and "push_config.push_endpoint" not in
             a.desired.fields}
    assert pulls == {
        f"projects/test-project/subscriptions/{env}--gyrinx.tasks--dead-letters--flaky-dead":
            "projects/test-project/topics/flaky-dead",
        f"projects/test-project/subscriptions/{env}--gyrinx.tasks--dead-letters--"
        "other-project.dead": "projects/other-project/topics/dead",
    }


def test_subscriptions_and_jobs_point_at_their_topics_by_reference(env):
    """References make Terraform create a topic before what uses it."""
    doc = terraform_config(CONFIG, routes_with_dead_letters())
    topics = doc["resource"]["google_pubsub_topic"]
    (subscription,) = [block for block in doc["resource"]["google_pubsub_subscription"].values()
                       if block["name"] == get_route("flaky").subscription_name]
    for reference in (subscription["topic"],
                      subscription["dead_letter_policy"]["dead_letter_topic"]):
        assert REFERENCE.fullmatch(reference)["label"] in topics
    (job,) = doc["resource"]["google_cloud_scheduler_job"].values()
    assert REFERENCE.fullmatch(job["pubsub_target"]["topic_name"])["label"] in topics
    assert "paused" not in job  # so a job staff paused stays paused under Terraform


def test_template_sequences_in_settings_are_escaped(env):
    text = json.dumps(terraform_config(CONFIG, get_routes()))
    assert "aud?x=$${not_a_var}&y=%%{not_a_directive}" in text
    assert "${not_a_var}" not in text.replace("$${", "")


def test_command_prints_the_settings_documents_without_credentials(
        env, settings, monkeypatch):
    def no_client(*args, **kwargs):
        raise AssertionError("--format terraform must not build a Google client.")

    for factory in ("publisher_client", "subscriber_client", "scheduler_client"):
        monkeypatch.setattr(clients, factory, no_client)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # Terraform provisions Google Cloud: the emulator's settings (no OIDC) do not apply.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    settings.TASKS_OIDC_AUDIENCE = AUDIENCE

    doc = json.loads(call())

    expected = ProvisioningConfig.from_settings(emulator=False)
    assert expected.push_endpoint == ENDPOINT and expected.service_account == INVOKER
    assert doc == json.loads(json.dumps(terraform_config(expected)))
    assert len(doc["resource"]["google_pubsub_subscription"]) == len(get_routes())
    assert len(doc["resource"]["google_cloud_scheduler_job"]) == 1
    assert env in doc["//"] and "test-project" in doc["//"]
    names = {d.name for d in desired_state(expected)}
    assert len(names) == sum(len(blocks) for blocks in doc["resource"].values())


def test_command_push_endpoint_option_sets_endpoint_and_audience(env):
    doc = json.loads(call("--push-endpoint", "https://other.example.run.app/tasks/pubsub/"))
    for block in doc["resource"]["google_pubsub_subscription"].values():
        assert block["push_config"] == {
            "push_endpoint": "https://other.example.run.app/tasks/pubsub/",
            "oidc_token": {"service_account_email": INVOKER,
                           "audience": "https://other.example.run.app/tasks/pubsub/"},
        }


def test_command_names_each_missing_setting_and_its_fix(env, settings):
    settings.CLOUD_RUN_SERVICE_URL = ""
    settings.TASKS_SERVICE_ACCOUNT = ""
    with pytest.raises(CommandError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "CLOUD_RUN_SERVICE_URL is not set" in message
    assert "TASKS_SERVICE_ACCOUNT is not set" in message


def test_labels_are_identifiers_and_never_collide():
    paths = ["projects/p/topics/a.b_c", "projects/p/topics/a_b.c", "projects/p/topics/x-y",
             "projects/p/topics/9env--gyrinx.tasks--m.f"]
    found = labels(paths)
    assert len(set(found.values())) == len(paths)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", label) for label in found.values())
    assert found["projects/p/topics/x-y"] == "x-y"  # unchanged when it is already one
    assert found["projects/p/topics/9env--gyrinx.tasks--m.f"] == "_9env--gyrinx_tasks--m_f"
    # Stable: a label does not depend on the order of the registry.
    assert labels(reversed(paths)) == found
