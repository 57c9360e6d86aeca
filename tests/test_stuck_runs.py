"""Stuck runs (gyrinx_tasks/health.py): the three kinds, per-task limits, the run list's
"stuck" filter with its recovery notes, and the overview's count, in a browser too."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import registry
from gyrinx_tasks.health import (
    DEFAULT_ACK_DEADLINE,
    StuckKind,
    stuck_filter,
    stuck_runs,
)
from gyrinx_tasks.models import PUBLISH_UNCONFIRMED, KillSwitch, State, SwitchMode, TaskExecution
from gyrinx_tasks.routes import TaskRoute
from tests.helpers import make_run, staff_user
from tests.infra.browser import PHONE, VIEWPORT, axe_violations, layout_problems, save_screenshot

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

RUNS = "admin:gyrinx_tasks_taskexecution_changelist"
OVERVIEW = "admin:gyrinx_tasks_overview_changelist"


def stuck_now(kind=None):
    """The stuck runs of ``kind`` (or of any kind), as the run list's filter finds them."""
    return TaskExecution.objects.filter(stuck_filter(kind))


def run(task, status, created_ago, attempted_ago=None, **fields):
    """A run created ``created_ago`` ago (and last attempted ``attempted_ago`` ago)."""
    made = make_run(task, status, **fields)
    now = timezone.now()
    TaskExecution.objects.filter(pk=made.pk).update(
        created_at=now - created_ago,
        last_attempted_at=None if attempted_ago is None else now - attempted_ago)
    return made


def pks(queryset):
    return set(queryset.values_list("pk", flat=True))


@pytest.fixture
def health_registry(settings):
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.health_registry"
    yield
    registry.clear_cache()


def test_default_ack_deadline_is_task_routes_own():
    assert TaskRoute.__dataclass_fields__["ack_deadline"].default == DEFAULT_ACK_DEADLINE


def test_running_past_its_ack_deadline_is_stuck_and_a_fresh_attempt_is_not():
    minutes = timedelta(minutes=1)
    dead = run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=6 * minutes)
    alive = run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=4 * minutes)
    # A run with no attempt time recorded is judged by when it was created.
    no_time = run("flaky", State.RUNNING, 10 * minutes)
    assert pks(stuck_now(StuckKind.RUNNING)) == {dead.pk, no_time.pk}
    assert alive.pk not in pks(stuck_now())


def test_an_unconfirmed_publish_older_than_the_ack_deadline_is_stuck():
    old = run("add", State.READY, timedelta(minutes=6), status_detail=PUBLISH_UNCONFIRMED)
    young = run("add", State.READY, timedelta(minutes=4), status_detail=PUBLISH_UNCONFIRMED)
    assert pks(stuck_now(StuckKind.UNCONFIRMED)) == {old.pk}
    # The kinds do not overlap: an unconfirmed run is not also "ready too long".
    older = run("add", State.READY, timedelta(hours=2), status_detail=PUBLISH_UNCONFIRMED)
    assert pks(stuck_now(StuckKind.WAITING)) == set()
    assert pks(stuck_now()) == {old.pk, older.pk}
    assert young.pk not in pks(stuck_now())


def test_ready_longer_than_the_max_ready_age_is_stuck_unless_its_task_is_held():
    waiting = run("echo", State.READY, timedelta(minutes=11))
    run("echo", State.READY, timedelta(minutes=9))
    assert pks(stuck_now(StuckKind.WAITING)) == {waiting.pk}

    # Skipping switch: deliveries are acknowledged, so a READY run is still stuck.
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.SKIP)
    assert pks(stuck_now()) == {waiting.pk}
    # Holding switch: the runs wait on purpose.
    KillSwitch.objects.filter(task_name="echo").update(mode=SwitchMode.HOLD)
    assert pks(stuck_now()) == set()


def test_settled_runs_are_never_stuck():
    for status in (State.SUCCESSFUL, State.FAILED, State.SKIPPED, State.REJECTED):
        run("add", status, timedelta(days=3), attempted_ago=timedelta(days=3),
            status_detail=PUBLISH_UNCONFIRMED)
    assert not stuck_now().exists()


def test_limits_are_the_routes_own(health_registry):
    # add: ack_deadline 60 s, max READY age 120 s; echo: max READY age an hour.
    running = run("add", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(seconds=90))
    unconfirmed = run("add", State.READY, timedelta(seconds=90),
                      status_detail=PUBLISH_UNCONFIRMED)
    waiting = run("add", State.READY, timedelta(seconds=150))
    run("echo", State.READY, timedelta(minutes=30))  # under its hour
    echo_late = run("echo", State.READY, timedelta(minutes=70))
    # A task that is not in the registry is judged by the defaults.
    unknown = run("retired_task", State.READY, timedelta(minutes=11))
    run("retired_task", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(minutes=4))
    assert pks(stuck_now(StuckKind.RUNNING)) == {running.pk}
    assert pks(stuck_now(StuckKind.UNCONFIRMED)) == {unconfirmed.pk}
    assert pks(stuck_now(StuckKind.WAITING)) == {waiting.pk, echo_late.pk,
                                                                    unknown.pk}


def test_the_settings_change_the_default_limit(settings):
    waiting = run("echo", State.READY, timedelta(minutes=3))
    assert not stuck_now().exists()
    settings.TASKS_HEALTH_MAX_READY_AGE = 120
    assert pks(stuck_now()) == {waiting.pk}


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        stuck_now("sleeping")


def test_stuck_runs_are_counted_per_task_and_kind_in_one_query():
    for _ in range(2):
        run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(minutes=6))
    run("add", State.READY, timedelta(minutes=6), status_detail=PUBLISH_UNCONFIRMED)
    oldest = run("echo", State.READY, timedelta(minutes=40))
    run("echo", State.READY, timedelta(minutes=20))
    run("echo", State.READY, timedelta(minutes=1))  # not stuck
    with CaptureQueriesContext(connection) as captured:
        stuck = stuck_runs()
    assert len(captured.captured_queries) == 1
    assert stuck.total == 5
    assert stuck.by_kind() == {"running": 2, "unconfirmed": 1, "waiting": 2}
    groups = {(g.task, g.kind): g for g in stuck.groups}
    assert groups["echo", StuckKind.WAITING].count == 2
    assert groups["echo", StuckKind.WAITING].oldest == TaskExecution.objects.get(
        pk=oldest.pk).created_at


# --- The run list's filter ----------------------------------------------------------------

def listed(response):
    return {row.pk for row in response.context["cl"].result_list}


def test_the_run_list_filters_stuck_runs_and_says_how_to_recover(admin_client):
    dead = run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(minutes=6))
    unconfirmed = run("add", State.READY, timedelta(minutes=6),
                      status_detail=PUBLISH_UNCONFIRMED)
    waiting = run("echo", State.READY, timedelta(minutes=11))
    run("echo", State.READY, timedelta(minutes=1))
    run("add", State.SUCCESSFUL, timedelta(days=1))

    response = admin_client.get(reverse(RUNS), {"stuck": "any"})
    assert response.status_code == 200
    assert listed(response) == {dead.pk, unconfirmed.pk, waiting.pk}
    html = response.content.decode()
    for kind in StuckKind:
        assert f'data-stuck-kind="{kind}"' in html
    assert "Publish again" in html

    response = admin_client.get(reverse(RUNS), {"stuck": "unconfirmed"})
    assert listed(response) == {unconfirmed.pk}
    html = response.content.decode()
    assert 'data-stuck-kind="unconfirmed"' in html and 'data-stuck-kind="running"' not in html

    # The filter combines with the others.
    assert listed(admin_client.get(reverse(RUNS), {"stuck": "any", "task_name": "echo"})) == {
        waiting.pk}
    # Without it, no notes.
    assert "gyrinx-stuck-help" not in admin_client.get(reverse(RUNS)).content.decode()


def test_an_unknown_stuck_kind_in_the_url_is_refused_like_any_bad_filter(admin_client):
    response = admin_client.get(reverse(RUNS), {"stuck": "sleeping"})
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_stuck_unconfirmed_run_offers_publish_again_on_its_page(admin_client):
    stuck = run("add", State.READY, timedelta(minutes=6), status_detail=PUBLISH_UNCONFIRMED)
    html = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                                    args=[stuck.pk])).content.decode()
    assert reverse("admin:gyrinx_tasks_taskexecution_republish", args=[stuck.pk]) in html


def test_stuck_ready_runs_are_published_again_in_bulk_from_the_filtered_list(
        admin_client, fake_publisher):
    unconfirmed = [run("add", State.READY, timedelta(minutes=6),
                       status_detail=PUBLISH_UNCONFIRMED) for _ in range(2)]
    waiting = run("echo", State.READY, timedelta(minutes=11))
    fresh = run("echo", State.READY, timedelta(minutes=1))
    run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(minutes=6))

    # "Select all N" on the filtered list: the page's form posts the page's rows too.
    response = admin_client.post(f"{reverse(RUNS)}?stuck=any",
                                 {"action": "republish_selected", "select_across": "1",
                                  "index": "0", "_selected_action": [waiting.pk]}, follow=True)
    assert response.status_code == 200
    texts = [str(m) for m in response.context["messages"]]
    assert texts == ["Published 3 run(s) again: each starts when it is delivered, once."]
    published = sorted(message["task_id"] for _topic, message, _attrs in
                       fake_publisher.published)
    assert published == sorted(r.result_id for r in [*unconfirmed, waiting])
    for stuck in [*unconfirmed, waiting]:
        stuck.refresh_from_db()
        assert (stuck.status, stuck.status_detail) == (State.READY, "")
        assert stuck.timeline[-1]["note"] == "published again by admin"
    assert LogEntry.objects.filter(change_message="Published again.").count() == 3
    # Published again, they are no longer stuck as unconfirmed (their message is confirmed).
    assert not stuck_now(StuckKind.UNCONFIRMED).exists()

    # A READY run still within its ack deadline is refused, and says why.
    response = admin_client.post(reverse(RUNS), {"action": "republish_selected",
                                                 "_selected_action": [fresh.pk]}, follow=True)
    [text] = [str(m) for m in response.context["messages"]]
    assert text.startswith("1 not published again: The run was enqueued less than its ack "
                           "deadline")
    assert len(fake_publisher.published) == 3


def test_publishing_again_in_bulk_needs_the_retry_permission(client, fake_publisher):
    stuck = run("add", State.READY, timedelta(minutes=6), status_detail=PUBLISH_UNCONFIRMED)
    client.force_login(staff_user("viewer", "view_taskexecution"))
    response = client.post(reverse(RUNS), {"action": "republish_selected",
                                           "_selected_action": [stuck.pk]})
    assert response.status_code == 403
    assert fake_publisher.published == []


def test_publishing_again_in_bulk_is_capped(admin_client, settings, fake_publisher):
    settings.TASKS_ADMIN_RETRY_LIMIT = 2
    runs = [run("add", State.READY, timedelta(minutes=6), status_detail=PUBLISH_UNCONFIRMED)
            for _ in range(3)]
    response = admin_client.post(f"{reverse(RUNS)}?stuck=unconfirmed",
                                 {"action": "republish_selected", "select_across": "1",
                                  "index": "0", "_selected_action": [runs[0].pk]},
                                 follow=True)
    [text] = [str(m) for m in response.context["messages"]]
    assert text.startswith("More than 2 of the selected runs are READY")
    assert fake_publisher.published == []


# --- The overview's count -----------------------------------------------------------------

def test_the_overview_counts_stuck_runs_and_links_to_them(admin_client):
    html = admin_client.get(reverse(OVERVIEW)).content.decode()
    assert 'data-stuck="0"' in html and "0</strong> stuck runs" in html

    run("flaky", State.RUNNING, timedelta(hours=1), attempted_ago=timedelta(minutes=6))
    run("echo", State.READY, timedelta(minutes=11))
    run("echo", State.READY, timedelta(minutes=12))
    html = admin_client.get(reverse(OVERVIEW), headers={"HX-Request": "true"}).content.decode()
    assert 'data-stuck="3"' in html
    assert f'href="{reverse(RUNS)}?stuck=any"' in html
    assert f'href="{reverse(RUNS)}?stuck=running"' in html
    assert f'href="{reverse(RUNS)}?stuck=waiting"' in html
    assert "?stuck=unconfirmed" not in html  # no link for a kind with none


def test_the_overview_marks_the_oldest_ready_run_by_the_tasks_own_limit(admin_client,
                                                                       health_registry):
    run("echo", State.READY, timedelta(minutes=30))  # echo waits up to an hour
    run("add", State.READY, timedelta(minutes=3))  # add up to two minutes
    html = admin_client.get(reverse(OVERVIEW)).content.decode()

    def oldest(task):
        row = html.split(f'data-task="{task}"')[1].split("</tr>")[0]
        return row.split('data-count="READY"')[1].split("</td>")[0]

    assert "gyrinx-bad" not in oldest("echo")
    assert "gyrinx-bad" in oldest("add")


def test_the_stuck_count_costs_the_overview_one_query(admin_client):
    admin_client.get(reverse(OVERVIEW))  # sessions, content types: warm
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(reverse(OVERVIEW))
    # The stuck count is the query that names each run's kind of stuck (health.py's "kind").
    stuck_queries = [q["sql"] for q in captured.captured_queries
                     if "CASE WHEN" in q["sql"] and 'AS "kind"' in q["sql"]]
    assert len(stuck_queries) == 1


# --- In a browser -------------------------------------------------------------------------

def stuck_scene():
    """A few healthy runs and one stuck run of each kind, plus two more waiting."""
    for i in range(6):
        run("add", State.SUCCESSFUL, timedelta(minutes=5 + i), attempted_ago=timedelta(
            minutes=5 + i))
    dead = run("flaky", State.RUNNING, timedelta(minutes=40), attempted_ago=timedelta(minutes=9),
               attempts=2)
    TaskExecution.objects.filter(pk=dead.pk).update(
        started_at=timezone.now() - timedelta(minutes=30))
    run("add", State.READY, timedelta(minutes=7), status_detail=PUBLISH_UNCONFIRMED)
    for minutes in (25, 18, 14):
        run("echo", State.READY, timedelta(minutes=minutes))


def check_page(page, name):
    """Both widths, light and dark: the layout holds, axe finds nothing serious."""
    for viewport, suffix in ((VIEWPORT, ""), (PHONE, "-mobile")):
        page.set_viewport_size(viewport)
        assert layout_problems(page) == [], name + suffix
        assert axe_violations(page) == [], name + suffix
        save_screenshot(page, name + suffix)
        save_screenshot(page, name + suffix, dark=True)
    page.set_viewport_size(VIEWPORT)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_overview_stuck_count_leads_to_the_filtered_list_in_a_browser(admin_page, live_server):
    stuck_scene()
    page = admin_page
    page.goto(f"{live_server.url}{reverse(OVERVIEW)}?window=1h")
    count = page.locator("li.gyrinx-stuck")
    assert count.get_attribute("data-stuck") == "5"
    assert count.locator('[data-stuck-kind="waiting"]').inner_text() == "3 ready too long"
    check_page(page, "overview-stuck")

    page.reload()  # the page polls while runs are queued: start from a fresh one
    page.locator("li.gyrinx-stuck a").first.click()
    page.wait_for_url("**/taskexecution/?stuck=any")
    assert page.locator("#result_list tbody tr").count() == 5
    assert page.locator(".gyrinx-stuck-help li").count() == 3
    check_page(page, "runs-stuck")

    # One kind from the overview's chips: the list and the note narrow to it.
    page.goto(f"{live_server.url}{reverse(OVERVIEW)}?window=1h")
    page.locator('li.gyrinx-stuck [data-stuck-kind="running"]').click()
    page.wait_for_url("**/taskexecution/?stuck=running")
    assert page.locator("#result_list tbody tr").count() == 1
    assert page.locator(".gyrinx-stuck-help li").inner_text().startswith(
        "Running past the ack deadline")


def test_an_invalid_route_threshold_falls_back_to_the_setting_until_fixed(settings):
    # E045 reports it; meanwhile the overview and the health endpoint keep working.
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.check_registries.bad_health_thresholds"
    try:
        run("echo", State.READY, timedelta(minutes=11))  # health_max_ready_age=90.5
        run("add", State.READY, timedelta(minutes=5))  # health_max_ready_age=0
        assert stuck_runs().by_kind()["waiting"] == 1
    finally:
        registry.clear_cache()


def test_an_invalid_max_ready_age_setting_leaves_the_overview_working(admin_client, settings):
    settings.TASKS_HEALTH_MAX_READY_AGE = "soon"  # E043; the default is used meanwhile
    run("echo", State.READY, timedelta(minutes=11))
    response = admin_client.get(reverse(OVERVIEW))
    assert response.status_code == 200 and 'data-stuck="1"' in response.content.decode()
