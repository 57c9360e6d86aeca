"""Backlog per route (issue 20, item 1): read from Cloud Monitoring, here its gRPC fake.

The real google-cloud-monitoring client talks to tests/fakes/monitoring.py; the pages show the
samples per route, or one sentence saying why there are none (the emulator, no permission, no
answer in time).
"""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from django.core.cache import cache
from django.urls import reverse

from gyrinx_tasks import backlog as backlogs
from gyrinx_tasks import clients
from gyrinx_tasks.admin import provisioning as provisioning_page
from gyrinx_tasks.checks import check_validated_settings
from gyrinx_tasks.provisioning import Action, Kind, Plan, ProvisioningConfig, Verb
from gyrinx_tasks.provisioning.plan import Desired
from gyrinx_tasks.registry import get_route, get_routes
from tests.helpers import staff_user
from tests.infra.browser import PHONE, VIEWPORT, layout_problems, save_screenshot

pytestmark = [pytest.mark.django_db, pytest.mark.clock]
pytest_plugins = ["tests.fakes.monitoring"]

OVERVIEW_BACKLOG = "admin:gyrinx_tasks_overview_backlog"
PROVISIONING_BACKLOG = "admin:gyrinx_tasks_provisioningstatus_backlog"


@pytest.fixture
def monitoring(monitoring_fake, monkeypatch):
    """Clients built by gyrinx_tasks talk to the in-process Cloud Monitoring fake."""
    built = []

    def factory(**kwargs):
        client = monitoring_fake.client()
        built.append(client)
        return client

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(clients, "monitoring_client", factory)
    cache.clear()
    monitoring_fake.built = built
    yield monitoring_fake
    cache.clear()


def sub(task: str) -> str:
    return get_route(task).subscription_name


def htmx_get(client, name):
    return client.get(reverse(name), headers={"HX-Request": "true"})


def row(body: str, task: str) -> str:
    start = body.index(f'class="gyrinx-backlog-row" data-task="{task}"')
    return body[start : body.index("</tr>", start)]


# --- Reading the metrics ----------------------------------------------------------------------


def test_reads_the_newest_sample_of_both_metrics_per_subscription(monitoring):
    now = datetime.now(UTC)
    monitoring.fake.set_backlog(sub("add"), 40, 900, at=now - timedelta(minutes=3))
    monitoring.fake.set_backlog(sub("add"), 12, 310, at=now - timedelta(minutes=1))
    monitoring.fake.set_backlog(sub("echo"), 0, 0, at=now - timedelta(minutes=2))
    # Too old to be "now", another environment's subscription, another project's.
    monitoring.fake.set_backlog(sub("nightly_cleanup"), 5, 60, at=now - timedelta(minutes=30))
    monitoring.fake.set_backlog("prod--gyrinx.tasks--tests.tasks.add-sub", 99, 99)
    monitoring.fake.set_backlog(sub("add"), 77, 77, project="other-project")

    backlog = backlogs.read_backlog()

    assert backlog.available, backlog.unavailable
    add = backlog.for_subscription(sub("add"))
    assert (add.undelivered, add.oldest_age) == (12, 310)
    assert abs(add.measured_at - (now - timedelta(minutes=1))) < timedelta(seconds=1)
    echo = backlog.for_subscription(sub("echo"))
    assert (echo.undelivered, echo.oldest_age) == (0, 0)
    assert backlog.for_subscription(sub("nightly_cleanup")).measured_at is None
    assert set(backlog.subscriptions) == {sub("add"), sub("echo")}

    requests = monitoring.fake.calls
    assert [r.filter.split('"')[1] for r in requests] == [backlogs.UNDELIVERED, backlogs.OLDEST_AGE]
    for request in requests:
        assert request.name == "projects/test-project"
        assert f'starts_with("{backlogs.subscription_prefix()}")' in request.filter
        span = request.interval.end_time - request.interval.start_time
        assert span == backlogs.LOOKBACK


def test_pages_through_every_series(monitoring, monkeypatch):
    monkeypatch.setattr(backlogs, "PAGE_SIZE", 1)
    for index, route in enumerate(get_routes()):
        monitoring.fake.set_backlog(route.subscription_name, index + 1, 60 * (index + 1))
    backlog = backlogs.read_backlog()
    assert {name: s.undelivered for name, s in backlog.subscriptions.items()} == {
        route.subscription_name: index + 1 for index, route in enumerate(get_routes())
    }
    tokens = [bool(r.page_token) for r in monitoring.fake.calls]
    assert len(tokens) == 2 * len(get_routes()) and tokens.count(False) == 2


def test_a_read_is_cached_for_the_setting_then_read_again(monitoring, settings):
    settings.TASKS_BACKLOG_CACHE_SECONDS = 60
    monitoring.fake.set_backlog(sub("add"), 3, 30)
    assert backlogs.read_backlog().for_subscription(sub("add")).undelivered == 3
    monitoring.fake.set_backlog(sub("add"), 8, 45)
    calls = len(monitoring.fake.calls)

    assert backlogs.read_backlog().for_subscription(sub("add")).undelivered == 3
    assert len(monitoring.fake.calls) == calls  # served from the cache
    assert backlogs.read_backlog(use_cache=False).for_subscription(sub("add")).undelivered == 8
    assert len(monitoring.fake.calls) == calls + 2


def test_permission_denied_says_which_role_is_missing(monitoring):
    monitoring.fake.fail_with = (
        grpc.StatusCode.PERMISSION_DENIED,
        "Permission monitoring.timeSeries.list denied for sa@x",
    )
    backlog = backlogs.read_backlog()
    assert not backlog.available
    assert backlog.unavailable == (
        "backlog not available: Cloud Monitoring refused this service's credentials; grant "
        "its service account roles/monitoring.viewer on the project."
    )
    assert "sa@x" not in backlog.unavailable
    # One call: a refusal is not retried, and the failure is cached like an answer.
    assert len(monitoring.fake.calls) == 1
    backlogs.read_backlog()
    assert len(monitoring.fake.calls) == 1


def test_no_answer_in_time_gives_up_within_the_bound(monitoring, monkeypatch):
    monkeypatch.setattr(backlogs, "TIMEOUT", 0.5)
    monitoring.fake.delay = 3.0
    started = datetime.now(UTC)
    backlog = backlogs.read_backlog()
    took = datetime.now(UTC) - started
    assert backlog.unavailable == (
        "backlog not available: Cloud Monitoring did not answer within 0.5 s; the page tries again."
    )
    assert took < timedelta(seconds=2)


def test_unavailable_service_is_retried_until_the_bound(monitoring, monkeypatch):
    monkeypatch.setattr(backlogs, "TIMEOUT", 1.0)
    monitoring.fake.fail_with = (grpc.StatusCode.UNAVAILABLE, "try later")
    backlog = backlogs.read_backlog()
    assert "did not answer within 1 s" in backlog.unavailable
    assert len(monitoring.fake.calls) > 1  # transient: retried, within the second


def test_other_errors_name_only_their_kind(monitoring):
    monitoring.fake.fail_with = (grpc.StatusCode.INVALID_ARGUMENT, "secret detail")
    backlog = backlogs.read_backlog()
    assert backlog.unavailable == (
        "backlog not available: reading Cloud Monitoring failed "
        "(InvalidArgument); the server log has the error."
    )


def test_no_credentials(monkeypatch):
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("File /srv/key.json was not found.")

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(clients, "monitoring_client", no_credentials)
    cache.clear()
    assert backlogs.read_backlog().unavailable == (
        "backlog not available: no usable Google credentials were found for this service."
    )


def test_on_the_emulator_nothing_is_asked(monitoring, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    backlog = backlogs.read_backlog()
    assert backlog.unavailable.startswith("backlog not available: the Pub/Sub emulator")
    assert monitoring.fake.calls == [] and monitoring.built == []


def test_without_a_project_nothing_is_asked(monitoring, settings):
    settings.GCP_PROJECT_ID = ""
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    backlog = backlogs.read_backlog()
    assert "GCP_PROJECT_ID is not set" in backlog.unavailable
    assert monitoring.fake.calls == []


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "–"),
        (0, "0 s"),
        (59, "59 s"),
        (600, "10 min"),
        (3 * 3600 + 300, "3 h 5 min"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
    ],
)
def test_format_age(seconds, text):
    assert backlogs.format_age(seconds) == text


@pytest.mark.parametrize("value", [0, -5, "soon"])
def test_a_bad_cache_setting_is_a_check_error(settings, value):
    settings.TASKS_BACKLOG_CACHE_SECONDS = value
    errors = [m for m in check_validated_settings() if m.id == "gyrinx_tasks.E050"]
    assert len(errors) == 1
    assert "TASKS_BACKLOG_CACHE_SECONDS" in errors[0].msg and errors[0].hint


def test_the_default_cache_setting_passes_the_check():
    assert check_validated_settings() == []


# --- The block on the two pages -------------------------------------------------------------


@pytest.mark.parametrize("name", [OVERVIEW_BACKLOG, PROVISIONING_BACKLOG])
def test_block_shows_each_route(admin_client, monitoring, name):
    monitoring.fake.set_backlog(sub("add"), 1234, 2 * 3600 + 60)
    monitoring.fake.set_backlog(sub("echo"), 0, 0)
    response = htmx_get(admin_client, name)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body  # the fragment alone
    assert 'hx-trigger="every 60s [!document.hidden]"' in body
    add = row(body, "add")
    assert ">1234<" in add and "2 h 1 min" in add and "gyrinx-bad" in add
    echo = row(body, "echo")
    assert ">0<" in echo and "0 s" in echo and "gyrinx-bad" not in echo
    assert "no sample in the last 10 minutes" in row(body, "nightly_cleanup")
    assert "1234</strong> messages waiting in all" in body


@pytest.mark.parametrize("name", [OVERVIEW_BACKLOG, PROVISIONING_BACKLOG])
def test_block_says_why_there_is_no_backlog(admin_client, monitoring, name):
    monitoring.fake.fail_with = (grpc.StatusCode.PERMISSION_DENIED, "no")
    body = htmx_get(admin_client, name).content.decode()
    assert "Backlog not available: Cloud Monitoring refused this service&#x27;s" in body
    assert "gyrinx-backlog-table" not in body


@pytest.mark.parametrize(
    "page, name",
    [
        ("admin:gyrinx_tasks_overview_changelist", OVERVIEW_BACKLOG),
        ("admin:gyrinx_tasks_provisioningstatus_changelist", PROVISIONING_BACKLOG),
    ],
)
def test_pages_load_the_block_after_rendering(admin_client, monitoring, page, name):
    body = admin_client.get(reverse(page)).content.decode()
    assert f'hx-get="{reverse(name)}" hx-trigger="load"' in body
    assert monitoring.fake.calls == []  # the page itself never waits for Cloud Monitoring


def test_without_javascript_the_block_url_is_a_page(admin_client, monitoring):
    monitoring.fake.set_backlog(sub("add"), 2, 20)
    response = admin_client.get(reverse(OVERVIEW_BACKLOG))
    body = response.content.decode()
    assert response.status_code == 200 and "<html" in body and "gyrinx-backlog-table" in body


@pytest.mark.parametrize(
    "codename, allowed, denied",
    [
        ("view_overview", OVERVIEW_BACKLOG, PROVISIONING_BACKLOG),
        ("view_provisioningstatus", PROVISIONING_BACKLOG, OVERVIEW_BACKLOG),
    ],
)
def test_each_block_needs_its_page_permission(client, monitoring, codename, allowed, denied):
    client.force_login(staff_user("viewer", codename))
    assert htmx_get(client, allowed).status_code == 200
    assert htmx_get(client, denied).status_code == 403


def test_post_is_refused(admin_client, monitoring):
    response = admin_client.post(reverse(OVERVIEW_BACKLOG), headers={"HX-Request": "true"})
    assert response.status_code == 405


# --- In a browser ---------------------------------------------------------------------------

CONFIG = ProvisioningConfig(
    project="test-project",
    location="europe-west2",
    push_endpoint="https://tasks-test.example.run.app/tasks/pubsub/",
    service_account="pubsub-invoker@test-project.iam.gserviceaccount.com",
    audience="https://tasks-test.example.run.app/tasks/pubsub/",
)


def in_sync_plan() -> Plan:
    actions = []
    for route in get_routes():
        for kind, name in (
            (Kind.TOPIC, CONFIG.topic_path(route.topic_name)),
            (Kind.SUBSCRIPTION, CONFIG.subscription_path(route.subscription_name)),
        ):
            actions.append(
                Action(kind, name, Verb.UNCHANGED, desired=Desired(kind, name, {}, {}, route))
            )
    return Plan(CONFIG, actions=actions)


def screenshots(page, name):
    for size, suffix in ((VIEWPORT, ""), (PHONE, "-phone")):
        page.set_viewport_size(size)
        assert layout_problems(page) == []
        save_screenshot(page, f"{name}{suffix}")
        save_screenshot(page, f"{name}{suffix}", dark=True)
    page.set_viewport_size(VIEWPORT)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_browser_backlog_on_the_overview_and_provisioning(
    monitoring, admin_page, live_server, monkeypatch
):
    monkeypatch.setattr(provisioning_page, "read_plan", in_sync_plan)
    now = datetime.now(UTC)
    monitoring.fake.set_backlog(sub("add"), 1842, 47 * 60, at=now - timedelta(minutes=1))
    monitoring.fake.set_backlog(sub("echo"), 3, 12, at=now - timedelta(minutes=1))
    page = admin_page

    page.goto(f"{live_server.url}{reverse('admin:gyrinx_tasks_overview_changelist')}")
    page.locator(".gyrinx-backlog-table").wait_for(timeout=30_000)
    assert "1842" in page.inner_text('.gyrinx-backlog-row[data-task="add"]')
    assert "47 min" in page.inner_text('.gyrinx-backlog-row[data-task="add"]')
    screenshots(page, "overview-backlog")

    page.goto(f"{live_server.url}{reverse('admin:gyrinx_tasks_provisioningstatus_changelist')}")
    page.locator(".gyrinx-plan").wait_for(timeout=30_000)
    page.locator(".gyrinx-backlog-table").wait_for(timeout=30_000)
    assert "12 s" in page.inner_text('.gyrinx-backlog-row[data-task="echo"]')
    screenshots(page, "provisioning-backlog")

    # Refused: the same place says so in a sentence.
    cache.clear()
    monitoring.fake.fail_with = (grpc.StatusCode.PERMISSION_DENIED, "denied")
    page.reload()
    sentence = page.locator(".gyrinx-backlog-unavailable")
    sentence.wait_for(timeout=30_000)
    assert sentence.inner_text().startswith("Backlog not available: Cloud Monitoring refused")
    save_screenshot(page, "provisioning-backlog-unavailable")
