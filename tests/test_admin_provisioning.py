"""The Provisioning status page: the plan per route, GCP failures explained, Provision now."""

import secrets
import time

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from google.auth.exceptions import DefaultCredentialsError

from gyrinx_tasks import clients
from gyrinx_tasks.admin import provisioning as page_module
from gyrinx_tasks.models import ProvisioningStatus
from gyrinx_tasks.provisioning import (
    Action,
    FieldChange,
    Kind,
    Plan,
    ProvisioningConfig,
    ProvisioningError,
    Verb,
    apply_plan,
    build_plan,
)
from gyrinx_tasks.provisioning.plan import Desired
from gyrinx_tasks.registry import get_route, get_routes
from tests.helpers import staff_user
from tests.infra import free_port
from tests.infra.browser import save_screenshot

pytestmark = pytest.mark.django_db

PAGE = "admin:gyrinx_tasks_provisioningstatus_changelist"
CONFIG = ProvisioningConfig(
    project="test-project", location="europe-west2",
    push_endpoint="https://tasks-test.example.run.app/tasks/pubsub/",
    service_account="pubsub-invoker@test-project.iam.gserviceaccount.com",
    audience="https://tasks-test.example.run.app/tasks/pubsub/",
)


def url(view):
    return reverse(f"admin:gyrinx_tasks_provisioningstatus_{view}")


def htmx(client, method, path, **data):
    return getattr(client, method)(path, data, headers={"HX-Request": "true"})


def audit_entries():
    kind = ContentType.objects.get_for_model(ProvisioningStatus, for_concrete_model=False)
    return list(LogEntry.objects.filter(content_type=kind).values_list("change_message",
                                                                      flat=True))


def action(kind, route, verb, name=None, **fields):
    name = name or {Kind.TOPIC: CONFIG.topic_path(route.topic_name),
                    Kind.SUBSCRIPTION: CONFIG.subscription_path(route.subscription_name),
                    Kind.SCHEDULER_JOB: CONFIG.job_path(route.scheduler_job_name or "")}[kind]
    return Action(kind, name, verb, desired=Desired(kind, name, {}, {}, route), **fields)


def every_state_plan():
    """A plan with each state: in sync, missing, differs, a conflict, and orphans."""
    add, echo, nightly = get_route("add"), get_route("echo"), get_route("nightly_cleanup")
    actions = [
        action(Kind.TOPIC, add, Verb.UNCHANGED),
        action(Kind.SUBSCRIPTION, add, Verb.UPDATE,
               changes=[FieldChange("ack_deadline_seconds", "60", "300")]),
        action(Kind.TOPIC, echo, Verb.CREATE),
        action(Kind.SUBSCRIPTION, echo, Verb.CONFLICT,
               changes=[FieldChange("topic", "projects/test-project/topics/old",
                                    CONFIG.topic_path(echo.topic_name))],
               note="it is attached to another topic"),
        action(Kind.SCHEDULER_JOB, nightly, Verb.UNCHANGED, state="PAUSED"),
        Action(Kind.TOPIC, CONFIG.topic_path("test--gyrinx.tasks--tests.tasks.retired"),
               Verb.ORPHAN, note="no route declares it; kept"),
        Action(Kind.SCHEDULER_JOB, CONFIG.job_path("test--gyrinx-scheduler--tests-retired"),
               Verb.DELETE, note="no route declares it any more"),
    ]
    return Plan(CONFIG, actions=actions)


class FakePlans:
    """Stands in for read_plan() and apply_plan(), recording every call."""

    def __init__(self, monkeypatch, plan_factory=every_state_plan):
        self.reads, self.applied = 0, []
        self.plan_factory = plan_factory
        monkeypatch.setattr(page_module, "read_plan", self.read)
        monkeypatch.setattr(page_module, "apply_plan", self.apply)

    def read(self):
        self.reads += 1
        return self.plan_factory()

    def apply(self, plan):
        self.applied.append(plan)
        for item in plan.actions:
            if item.verb in (Verb.CREATE, Verb.UPDATE, Verb.DELETE):
                item.result = {Verb.CREATE: "created", Verb.DELETE: "deleted"}.get(
                    item.verb, "updated")
        return plan


@pytest.fixture
def fake_plans(monkeypatch):
    return FakePlans(monkeypatch)


def row(body, task):
    """The HTML of one task's row in the plan table."""
    start = body.index(f'data-task="{task}"')
    return body[start:body.index("</tr>", start)]


# --- The page and the plan fragment ---------------------------------------------------------

def test_page_renders_at_once_and_loads_the_plan_with_htmx(admin_client, fake_plans):
    response = admin_client.get(reverse(PAGE))

    body = response.content.decode()
    assert response.status_code == 200 and fake_plans.reads == 0  # GCP is not called here
    assert f'hx-get="{url("plan")}"' in body and 'hx-trigger="load"' in body
    assert "htmx" in body  # django-htmx's script tag


def test_plan_shows_each_state_per_route(admin_client, fake_plans):
    response = htmx(admin_client, "get", url("plan"))

    body = response.content.decode()
    assert response.status_code == 200 and fake_plans.reads == 1
    add, echo, nightly = row(body, "add"), row(body, "echo"), row(body, "nightly_cleanup")
    assert add.count(">in sync<") == 1 and add.count(">differs<") == 1
    assert "<code>ack_deadline_seconds</code>: 60 &rarr; 300" in add
    assert ">missing<" in echo and "it is attached to another topic" in echo
    assert "<code>topic</code>: projects/test-project/topics/old &rarr;" in echo
    assert ">in sync<" in nightly and "(paused)" in nightly
    assert "not scheduled" in add
    orphans = body[body.index("Orphaned in this environment"):]
    assert orphans.count(">orphaned<") == 2
    assert "test--gyrinx.tasks--tests.tasks.retired" in orphans
    assert "Provision now" in body
    assert "1 to create, 1 to update, 1 to delete, 2 unchanged" in body


def test_plan_in_sync_offers_no_provisioning(admin_client, monkeypatch):
    FakePlans(monkeypatch, lambda: Plan(CONFIG, actions=[
        action(Kind.TOPIC, r, Verb.UNCHANGED) for r in get_routes()]))

    body = htmx(admin_client, "get", url("plan")).content.decode()

    assert body.count(">in sync<") == len(get_routes())
    assert "gyrinx-provision-now" not in body


def test_without_javascript_the_plan_url_is_a_whole_page(admin_client, fake_plans):
    body = admin_client.get(url("plan")).content.decode()

    assert "<html" in body and "ack_deadline_seconds" in body


# --- GCP unreachable or not configured ----------------------------------------------------

def test_unreachable_emulator_is_explained_within_the_bound(admin_client, monkeypatch):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)

    started = time.monotonic()
    response = htmx(admin_client, "get", url("plan"))
    elapsed = time.monotonic() - started

    body = response.content.decode()
    assert response.status_code == 200
    assert "Could not read the state of GCP" in body
    assert "Reading the current state from GCP failed: No answer in time" in body
    assert f"PUBSUB_EMULATOR_HOST is {host}: is the Pub/Sub emulator running there?" in body
    assert "GCP_PROJECT_ID is &#x27;test-project&#x27;" in body
    assert f"gives up after {page_module.CALL_TIMEOUT:g} s" in body
    assert elapsed < 60  # generous: the documented bound is ~10 s; this only proves it returns


def test_missing_credentials_are_explained(admin_client, monkeypatch):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(clients, "publisher_client", no_credentials)

    body = htmx(admin_client, "get", url("plan")).content.decode()

    assert "Could not create the publisher client" in body
    assert "gcloud auth application-default login" in body
    assert "PUBSUB_EMULATOR_HOST" in body  # the local alternative is named


def test_missing_settings_are_explained(admin_client, settings, monkeypatch):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    settings.CLOUD_RUN_SERVICE_URL = ""

    response = htmx(admin_client, "get", url("plan"))

    assert response.status_code == 200
    assert "CLOUD_RUN_SERVICE_URL is not set" in response.content.decode()


# --- Provision now -------------------------------------------------------------------------

def test_provision_now_confirms_applies_and_audits(admin_client, fake_plans):
    confirm = htmx(admin_client, "get", url("confirm")).content.decode()
    assert fake_plans.applied == []
    assert "3 changes to make" in confirm
    assert "<code>ack_deadline_seconds</code>: 60 &rarr; 300" in confirm
    fingerprint = page_module.fingerprint(every_state_plan())
    assert f'value="{fingerprint}"' in confirm

    done = htmx(admin_client, "post", url("apply"), fingerprint=fingerprint)

    body = done.content.decode()
    assert done.status_code == 200 and len(fake_plans.applied) == 1
    assert "Provisioned: 3 changes made." in body and "created" in body
    [entry] = audit_entries()
    assert entry == (
        "Provision now: update subscription test--gyrinx.tasks--tests.tasks.add-sub: updated; "
        "create topic test--gyrinx.tasks--tests.tasks.echo: created; "
        "delete scheduler job test--gyrinx-scheduler--tests-retired: deleted.")


def test_a_plan_that_changed_since_confirmation_is_shown_again(admin_client, fake_plans):
    response = htmx(admin_client, "post", url("apply"), fingerprint="stale")

    assert fake_plans.applied == [] and audit_entries() == []
    assert "changed since the plan was shown" in response.content.decode()


def test_failed_changes_are_reported_and_audited(admin_client, monkeypatch):
    fakes = FakePlans(monkeypatch)

    def failing(plan):
        fakes.apply(plan)
        plan.actions[2].result, plan.actions[2].error = "", "PermissionDenied: no"
        raise ProvisioningError("1 of 3 changes failed. create topic x: PermissionDenied: no")

    monkeypatch.setattr(page_module, "apply_plan", failing)
    fingerprint = page_module.fingerprint(every_state_plan())

    body = htmx(admin_client, "post", url("apply"), fingerprint=fingerprint).content.decode()

    assert "1 of 3 changes failed" in body and "PermissionDenied: no" in body
    assert "PermissionDenied: no" in audit_entries()[0]


def test_provision_now_without_javascript_redirects_with_a_message(admin_client, fake_plans):
    fingerprint = page_module.fingerprint(every_state_plan())

    response = admin_client.post(url("apply"), {"fingerprint": fingerprint}, follow=True)

    assert response.redirect_chain == [(reverse(PAGE), 302)]
    assert "Provisioned: update subscription" in response.content.decode()


# --- Permissions ---------------------------------------------------------------------------

def test_view_only_user_sees_no_button_and_gets_403(client, fake_plans):
    client.force_login(staff_user("viewer", "view_provisioningstatus"))

    body = htmx(client, "get", url("plan")).content.decode()

    assert "ack_deadline_seconds" in body and "gyrinx-provision-now" not in body
    assert client.get(url("confirm")).status_code == 403
    assert client.post(url("apply")).status_code == 403
    assert htmx(client, "post", url("apply"),
                fingerprint=page_module.fingerprint(every_state_plan())).status_code == 403
    assert fake_plans.applied == [] and audit_entries() == []


def test_without_view_permission_the_page_is_403(client, fake_plans):
    client.force_login(staff_user("nobody"))

    assert client.get(reverse(PAGE)).status_code == 403
    assert client.get(url("plan")).status_code == 403
    assert fake_plans.reads == 0


def test_get_never_changes_anything(admin_client, fake_plans):
    for path in (reverse(PAGE), url("plan"), url("confirm")):
        assert admin_client.get(path).status_code == 200
        assert htmx(admin_client, "get", path).status_code == 200
    assert admin_client.get(url("apply")).status_code == 405

    assert fake_plans.applied == [] and audit_entries() == []


def test_page_is_listed_in_the_app_index(admin_client):
    body = admin_client.get(reverse("admin:app_list", args=["gyrinx_tasks"])).content.decode()

    assert reverse(PAGE) in body
    assert reverse("admin:gyrinx_tasks_scheduledjob_changelist") in body


# --- Against the real emulator -------------------------------------------------------------

@pytest.fixture
def emulator_env(settings, pubsub_emulator, live_server):
    """A fresh environment on the emulator, pushing to the live server; cleaned up after."""
    settings.TASKS_ENVIRONMENT = "pv" + secrets.token_hex(4)
    settings.TASKS_VERIFY_OIDC = False
    settings.TASKS_EMULATOR_PUSH_ENDPOINT = f"{live_server.url}/tasks/pubsub/"
    yield settings.TASKS_ENVIRONMENT
    held = build_plan()
    with held:
        subscriber, publisher = held.clients.get_subscriber(), held.clients.get_publisher()
        for item in held.actions:
            if item.kind == Kind.SUBSCRIPTION and item.verb != Verb.CREATE:
                subscriber.delete_subscription(request={"subscription": item.name})
        for item in held.actions:
            if item.kind == Kind.TOPIC and item.verb != Verb.CREATE:
                publisher.delete_topic(request={"topic": item.name})


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_real_plan_on_the_emulator(admin_client, emulator_env):
    with build_plan() as plan:
        apply_plan(plan)

    body = htmx(admin_client, "get", url("plan")).content.decode()

    assert body.count(">in sync<") == 2 * len(get_routes())
    assert ">missing<" not in body and "gyrinx-provision-now" not in body
    assert "fired by the local scheduler" in row(body, "nightly_cleanup")


@pytest.mark.browser
@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_browser_in_sync_then_missing_then_provision_now_fixes_it(emulator_env, admin_page,
                                                                  live_server):
    with build_plan() as plan:
        apply_plan(plan)
    page = admin_page
    page.goto(f"{live_server.url}{reverse(PAGE)}")
    page.locator(".gyrinx-plan").first.wait_for(timeout=30_000)
    count = len(get_routes())
    assert page.locator(".gyrinx-state-ok").count() == 2 * count
    assert page.locator(".gyrinx-state-missing").count() == 0
    assert "fired by the local scheduler" in page.inner_text('[data-task="nightly_cleanup"]')
    save_screenshot(page, "provisioning")
    save_screenshot(page, "provisioning", dark=True)

    route = get_route("add")
    subscriber = clients.subscriber_client()
    try:
        subscriber.delete_subscription(request={
            "subscription": CONFIG.subscription_path(route.subscription_name)})
    finally:
        subscriber.close()
    page.click("text=Refresh")
    missing = page.locator('[data-task="add"] .gyrinx-kind-subscription .gyrinx-state-missing')
    missing.wait_for(timeout=30_000)
    assert page.locator(".gyrinx-state-missing").count() == 1
    save_screenshot(page, "provisioning-missing")

    page.click(".gyrinx-provision-now")
    page.locator("text=Provision now: 1 change to make").wait_for(timeout=30_000)
    assert route.subscription_name in page.inner_text(".gyrinx-todo")
    page.click(".gyrinx-provisioning input[type=submit]")
    page.locator("text=Provisioned: 1 change made.").wait_for(timeout=30_000)
    assert "created" in page.inner_text(".gyrinx-applied")
    page.click("text=Show the status now")
    page.locator(".gyrinx-plan").first.wait_for(timeout=30_000)
    assert page.locator(".gyrinx-state-ok").count() == 2 * count
    assert audit_entries()[0].startswith(
        f"Provision now: create subscription {route.subscription_name}: created")


# --- What a failure shows to whom (issue 17, item 14) ----------------------------------------
# Before: every viewer saw the Google client's own text (key file paths, service accounts,
# the project id) and the settings' values.

KEY_FILE = "/srv/secrets/tasks-sa-key.json"


def failing_plan(monkeypatch, exc):
    def read():
        raise exc
    monkeypatch.setattr(page_module, "read_plan", read)


def credentials_failure():
    try:
        raise DefaultCredentialsError(f"File {KEY_FILE} was not found.")
    except DefaultCredentialsError as cause:
        try:
            raise ProvisioningError(f"Could not create the publisher client: {cause}") from cause
        except ProvisioningError as exc:
            return exc


@pytest.mark.parametrize("make_exc, sentence", [
    (credentials_failure, "No usable Google credentials were found for this service."),
    (lambda: ProvisioningError("Reading the current state from GCP failed: PermissionDenied: "
                               "projects/test-project denied to sa@test-project.iam"),
     "Reading the state of GCP failed."),
    (lambda: __import__("google.api_core.exceptions", fromlist=["x"]).PermissionDenied(
        "projects/test-project: caller sa@test-project.iam lacks pubsub.topics.list"),
     "GCP refused the credentials of this service, or they lack a role."),
    (lambda: __import__("django.core.exceptions", fromlist=["x"]).ImproperlyConfigured(
        f"GOOGLE_APPLICATION_CREDENTIALS={KEY_FILE} for test-project"),
     "The provisioning settings are incomplete or wrong."),
])
def test_view_only_staff_see_a_sentence_not_the_error_text(client, monkeypatch, settings,
                                                           make_exc, sentence):
    settings.GCP_PROJECT_ID = "test-project"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "10.1.2.3:8085")
    failing_plan(monkeypatch, make_exc())
    client.force_login(staff_user("looker", "view_provisioningstatus"))
    for headers in ({"HX-Request": "true"}, {}):
        body = client.get(url("plan"), headers=headers).content.decode()
        assert "Could not read the state of GCP" in body and sentence in body
        assert "shown to superusers" in body
        for secret in (KEY_FILE, "test-project", "sa@", "10.1.2.3"):
            assert secret not in body, secret


def test_superusers_and_provisioners_see_the_detail(client, admin_client, monkeypatch,
                                                    settings):
    settings.GCP_PROJECT_ID = "test-project"
    failing_plan(monkeypatch, credentials_failure())
    provisioner = staff_user("provisioner", "view_provisioningstatus",
                             "provision_provisioningstatus")
    client.force_login(provisioner)
    for who in (admin_client, client):
        body = htmx(who, "get", url("plan")).content.decode()
        assert KEY_FILE in body and "GCP_PROJECT_ID is &#x27;test-project&#x27;" in body
    confirm = htmx(client, "get", url("confirm")).content.decode()
    assert KEY_FILE in confirm


def test_the_detail_goes_to_the_server_log(client, monkeypatch, caplog):
    failing_plan(monkeypatch, credentials_failure())
    client.force_login(staff_user("looker", "view_provisioningstatus"))
    with caplog.at_level("WARNING", logger="gyrinx_tasks"):
        htmx(client, "get", url("plan"))
    assert KEY_FILE in caplog.text
