"""The overview page: permission, polling (slow when idle), counts and links, in a browser."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import make_run, manage, shell, staff_user
from tests.infra.browser import save_screenshot

OVERVIEW = "admin:gyrinx_tasks_overview_changelist"
pytestmark = [pytest.mark.django_db, pytest.mark.clock]


def finished(task_name, status, seconds, ago=timedelta(minutes=10), **fields):
    run = make_run(task_name, status, **fields)
    created = timezone.now() - ago
    TaskExecution.objects.filter(pk=run.pk).update(
        created_at=created, started_at=created + timedelta(milliseconds=30),
        finished_at=created + timedelta(milliseconds=30, seconds=seconds))
    return run


def cell(html, task, column):
    """The text of one count cell in a task's row."""
    row = re.search(rf'<tr class="gyrinx-task-row" data-task="{task}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {task}"
    found = re.search(rf'data-count="{column}">(.*?)</td>', row.group(1), re.S)
    assert found, f"no {column} cell for {task}"
    return re.sub(r"<[^>]+>", " ", found.group(1)).split()[0]


def test_page_renders_with_zero_runs(admin_client):
    response = admin_client.get(reverse(OVERVIEW))
    html = response.content.decode()
    assert response.status_code == 200
    # Every registered task has a row, with nothing to show yet.
    for name in ("add", "echo", "explode", "flaky", "nightly_cleanup"):
        assert cell(html, name, "total") == "0"
        assert cell(html, name, "failure-rate") == "–"
    assert "Nothing is running." in html
    # Loaded idle, it still polls, slowly, so it notices work that starts later.
    assert "Nothing queued or running; checking every 30 s." in html
    root = html.split('id="gyrinx-overview"')[1].split(">")[0]
    assert 'hx-trigger="every 30s [!document.hidden]"' in root


def test_counts_failure_rate_and_durations_are_shown(admin_client):
    for seconds in (0.1, 0.2, 0.3):
        finished("add", State.SUCCESSFUL, seconds)
    finished("add", State.FAILED, 0.4)
    finished("explode", State.FAILED, 2.5)
    finished("echo", State.SUCCESSFUL, 1, ago=timedelta(hours=3))  # outside the last hour

    hour = admin_client.get(reverse(OVERVIEW), {"window": "1h"}).content.decode()
    assert [cell(hour, "add", c) for c in ("total", "SUCCESSFUL", "FAILED", "failure-rate")] \
        == ["4", "3", "1", "25.0%"]
    assert cell(hour, "explode", "failure-rate") == "100%"
    assert cell(hour, "echo", "total") == "0"
    # p50 of [0.1, 0.2, 0.3, 0.4] is 0.25 s; p95 is 0.385 s.
    add_row = re.search(r'data-task="add">(.*?)</tr>', hour, re.S).group(1)
    assert "250 ms" in add_row and "385 ms" in add_row

    day = admin_client.get(reverse(OVERVIEW), {"window": "24h"}).content.decode()
    assert cell(day, "echo", "total") == "1"


def test_links_open_the_run_list_filtered_to_the_task_status_and_window(admin_client):
    failed = finished("add", State.FAILED, 0.4)
    finished("add", State.SUCCESSFUL, 0.1)
    old_failure = finished("add", State.FAILED, 0.4, ago=timedelta(days=2))
    html = admin_client.get(reverse(OVERVIEW), {"window": "24h"}).content.decode()

    row = re.search(r'data-task="add">(.*?)</tr>', html, re.S).group(1)
    link = unescape(re.search(r'data-count="FAILED"><a href="([^"]+)"', row).group(1))
    assert link.startswith(reverse("admin:gyrinx_tasks_taskexecution_changelist") + "?")
    assert "task_name=add" in link and "status=FAILED" in link

    runs = admin_client.get(link).content.decode()
    assert failed.result_id[:8] in runs
    assert old_failure.result_id[:8] not in runs  # the window carries over to the list
    assert runs.count('class="field-short_result_id"') == 1


def test_polling_is_fast_while_something_runs_and_slow_when_idle(admin_client):
    running = make_run("add", State.RUNNING, started_at=timezone.now())
    page = admin_client.get(reverse(OVERVIEW), {"window": "1h"}).content.decode()
    root = page.split('id="gyrinx-overview"')[1].split(">")[0]
    assert 'hx-trigger="every 5s [!document.hidden]"' in root and "window=1h" in root

    poll = admin_client.get(reverse(OVERVIEW), {"window": "1h"}, headers={"HX-Request": "true"})
    assert poll.status_code == 200
    fragment = poll.content.decode()
    assert fragment.lstrip().startswith('<div id="gyrinx-overview"')  # the fragment alone
    assert "<html" not in fragment and 'hx-trigger="every 5s [!document.hidden]"' in fragment
    assert running.result_id[:8] in fragment

    TaskExecution.objects.filter(pk=running.pk).update(status=State.SUCCESSFUL,
                                                       finished_at=timezone.now())
    last = admin_client.get(reverse(OVERVIEW), {"window": "1h"}, headers={"HX-Request": "true"})
    # Idle: still 200 and still polling, every 30 s, so new work shows up without a reload.
    assert last.status_code == 200
    assert 'hx-trigger="every 30s [!document.hidden]"' in last.content.decode()
    assert "Nothing queued or running" in last.content.decode()


def test_a_stuck_ready_run_keeps_polling_and_is_flagged(admin_client):
    make_run("flaky", State.READY)
    TaskExecution.objects.update(created_at=timezone.now() - timedelta(days=3))
    response = admin_client.get(reverse(OVERVIEW), headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert cell(html, "flaky", "READY") == "1"
    assert "oldest 3\xa0days" in html and "gyrinx-bad" in html


def test_view_permission_is_required(client):
    client.force_login(staff_user("no_overview", "view_taskexecution"))
    assert client.get(reverse(OVERVIEW)).status_code == 403
    assert client.get(reverse(OVERVIEW), headers={"HX-Request": "true"}).status_code == 403
    app_index = client.get(reverse("admin:app_list", args=["gyrinx_tasks"])).content.decode()
    assert reverse(OVERVIEW) not in app_index

    client.force_login(staff_user("overview_only", "view_overview"))
    assert client.get(reverse(OVERVIEW)).status_code == 200


def test_only_the_page_exists_and_it_changes_nothing(admin_client):
    run = make_run("add", State.READY)
    assert admin_client.post(reverse(OVERVIEW)).status_code == 405
    assert admin_client.get(f"/admin/gyrinx_tasks/overview/{run.pk}/change/").status_code == 404
    assert admin_client.get("/admin/gyrinx_tasks/overview/add/").status_code == 404
    before = list(TaskExecution.objects.values())
    admin_client.get(reverse(OVERVIEW))
    assert list(TaskExecution.objects.values()) == before


def test_unknown_window_is_a_clear_error(admin_client):
    response = admin_client.get(reverse(OVERVIEW), {"window": "forever"})
    assert response.status_code == 400
    html = response.content.decode()
    assert ("There is no time window called &#x27;forever&#x27;; choose one of 1h, 24h, 7d, "
            "30d, 90d.") in html
    assert "Last 24 hours" in html  # and the default window is shown below the error


def test_query_count_is_bounded(admin_client):
    for name in ("add", "echo", "flaky", "explode"):
        for status in State.values:
            finished(name, status, 0.2, trigger=Trigger.ENQUEUE)

    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get(reverse(OVERVIEW)).status_code == 200
    # Session and user, the five overview queries (the fifth tells failing runs that will
    # retry from final failures), one for all scheduled jobs' health, one for the stuck runs
    # (tests/test_stuck_runs.py) and the recent failures (asked for because the window holds
    # some); nothing per task or per run.
    assert len(captured.captured_queries) <= 10


def test_recent_failures_are_not_looked_up_when_the_window_has_none(admin_client):
    finished("add", State.SUCCESSFUL, 0.2)
    finished("add", State.FAILED, 0.2, ago=timedelta(days=3))  # outside the 24 hours

    with CaptureQueriesContext(connection) as captured:
        html = admin_client.get(reverse(OVERVIEW)).content.decode()

    assert len(captured.captured_queries) <= 7  # as above, without the recent failures
    assert "No run failed in this window." in html


def test_recent_failures_panel_names_task_error_class_when_and_links(admin_client):
    def failed(task, path, ago):
        return finished(task, State.FAILED, 0.2, ago=ago, errors=[
            {"exception_class_path": "builtins.ValueError", "traceback": "t", "attempt": 1},
            {"exception_class_path": path, "traceback": "Traceback: secret", "attempt": 2}])

    older = failed("explode", "builtins.RuntimeError", timedelta(hours=2))
    newer = failed("flaky", "requests.exceptions.ConnectionError",
                   timedelta(minutes=5, seconds=30))
    failed("flaky", "builtins.KeyError", timedelta(days=2))  # before the window
    finished("add", State.SUCCESSFUL, 0.2)

    html = admin_client.get(reverse(OVERVIEW)).content.decode()

    panel = html[html.index('class="module gyrinx-failures"'):]
    panel = panel[:panel.index('class="module gyrinx-running"')]
    rows = re.findall(r'<tr class="gyrinx-failure">(.*?)</tr>', panel, re.S)
    assert len(rows) == 2
    for row, run, name, path in ((rows[0], newer, "ConnectionError",
                                  "requests.exceptions.ConnectionError"),
                                 (rows[1], older, "RuntimeError", "builtins.RuntimeError")):
        assert f'title="{path}">{name}</code>' in row
        change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])
        assert f'<a href="{change}"><code>{run.result_id[:8]}</code></a>' in row
        assert f"?task_name={run.task_name}&amp;status=FAILED&amp;created_at__gte=" in row
        assert " ago</td>" in row
    assert "5\xa0minutes ago" in rows[0]
    assert "KeyError" not in panel and "secret" not in panel


def test_recent_failures_panel_shows_ten_and_links_to_the_rest(admin_client):
    for minutes in range(12):
        finished("explode", State.FAILED, 0.1, ago=timedelta(minutes=minutes + 1),
                 errors=[{"exception_class_path": "builtins.RuntimeError", "traceback": "t"}])

    html = admin_client.get(reverse(OVERVIEW)).content.decode()

    assert html.count('<tr class="gyrinx-failure">') == 10
    assert "The newest 10 of 12 failed or failing runs in the window." in html
    assert "See the 12 failed</a>" in html


def test_app_index_loads_the_overview_on_top(admin_client):
    html = admin_client.get(reverse("admin:app_list", args=["gyrinx_tasks"])).content.decode()
    loader = re.search(r'<div id="gyrinx-overview"[^>]*>', html).group(0)
    assert f'hx-get="{reverse(OVERVIEW)}?embed=1"' in loader and 'hx-trigger="load"' in loader
    assert "htmx" in html and html.index("gyrinx-overview") < html.index("Task executions")
    embedded = admin_client.get(reverse(OVERVIEW), {"embed": "1"},
                                headers={"HX-Request": "true"}).content.decode()
    assert 'class="gyrinx-overview-title"' in embedded


# --- In a browser -------------------------------------------------------------------------

def realistic_runs():
    """A morning's worth of runs: several tasks, some failures, one stuck, two running."""
    now = timezone.now()
    plan = [("add", 40, 0.05, 0.0), ("echo", 18, 0.3, 0.05), ("flaky", 14, 1.2, 0.3),
            ("report_attempt", 8, 4.0, 0.0), ("explode", 5, 0.8, 1.0)]
    runs = []
    for name, count, seconds, failing in plan:
        for i in range(count):
            status = State.FAILED if i < round(count * failing) else State.SUCCESSFUL
            created = now - timedelta(minutes=(i * 53) % 58 + 1, seconds=i * 7 % 60)
            # flaky's first two failures are delivered and will be retried by Pub/Sub.
            retrying = name == "flaky" and i < 2
            run = TaskExecution(task_name=name, task_path=f"tests.tasks.{name}",
                                message_id=f"{name}-{i}" if retrying else None,
                                status=status, created_at=created, attempts=1,
                                started_at=created + timedelta(milliseconds=40),
                                finished_at=created + timedelta(seconds=seconds * (1 + i % 5)))
            runs.append(run)
    scheduled = TaskExecution(task_name="nightly_cleanup", task_path="tests.tasks.nightly_cleanup",
                              status=State.SUCCESSFUL, trigger=Trigger.SCHEDULE,
                              created_at=now - timedelta(minutes=30), attempts=1,
                              started_at=now - timedelta(minutes=30),
                              finished_at=now - timedelta(minutes=29, seconds=12))
    runs.append(scheduled)
    runs.append(TaskExecution(task_name="report_attempt", task_path="tests.tasks.report_attempt",
                              status=State.RUNNING, attempts=1, created_at=now,
                              started_at=now - timedelta(seconds=12)))
    runs.append(TaskExecution(task_name="flaky", task_path="tests.tasks.flaky",
                              status=State.RUNNING, attempts=2, created_at=now,
                              started_at=now - timedelta(seconds=40)))
    runs.append(TaskExecution(task_name="echo", task_path="tests.tasks.echo",
                              status=State.READY, created_at=now - timedelta(minutes=12)))
    TaskExecution.objects.bulk_create(runs)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_overview_in_a_browser_shows_the_runs_and_slows_down_when_idle(admin_page, live_server):
    realistic_runs()
    page = admin_page
    page.goto(f"{live_server.url}{reverse(OVERVIEW)}?window=1h")

    def count(task, column):
        return page.locator(f'tr[data-task="{task}"] td[data-count="{column}"]').inner_text()

    assert count("add", "total") == "40"
    assert count("explode", "FAILED") == "5"
    # Two of flaky's four failures will retry: failing, not failed, and not in the rate.
    assert (count("flaky", "WILL_RETRY"), count("flaky", "FAILED")) == ("2", "2")
    assert count("flaky", "failure-rate") == "16.7%"  # 2 ÷ (10 + 2)
    assert count("flaky", "RUNNING") == "1"
    assert page.locator(".gyrinx-running tbody tr").count() == 2
    assert page.locator('tr[data-task="add"] svg rect.gyrinx-bar').count() > 10
    assert page.locator("#gyrinx-overview").get_attribute("data-active") == "true"
    save_screenshot(page, "overview")
    save_screenshot(page, "overview", dark=True)

    # The runs settle; the next poll swaps the final state in and polling slows down.
    TaskExecution.objects.filter(status__in=[State.READY, State.RUNNING]).update(
        status=State.SUCCESSFUL, finished_at=timezone.now())
    page.wait_for_selector('#gyrinx-overview[data-active="false"]', timeout=15_000)
    assert page.locator("#gyrinx-overview").get_attribute("data-poll-seconds") == "30"
    assert count("flaky", "RUNNING") == "0"
    assert page.locator(".gyrinx-running").inner_text().endswith("Nothing is running.")

    # The app's index page shows the same overview above the model list.
    page.goto(f"{live_server.url}/admin/gyrinx_tasks/")
    page.wait_for_selector('#gyrinx-overview tr[data-task="add"]', timeout=10_000)
    assert page.locator('tr[data-task="add"] td[data-count="total"]').inner_text() == "40"
    save_screenshot(page, "overview-app-index")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_overview_loaded_idle_notices_new_work_and_speeds_up(admin_page, live_server,
                                                             monkeypatch):
    from gyrinx_tasks.admin import overview

    # The live server runs in this process: shorter intervals keep the test quick.
    monkeypatch.setattr(overview, "IDLE_POLL_SECONDS", 1)
    monkeypatch.setattr(overview, "POLL_SECONDS", 1)
    page = admin_page
    page.goto(f"{live_server.url}{reverse(OVERVIEW)}?window=1h")
    assert page.locator("#gyrinx-overview").get_attribute("data-active") == "false"

    run = make_run("add", State.READY)
    page.wait_for_selector('#gyrinx-overview[data-active="true"]', timeout=10_000)
    assert page.locator('tr[data-task="add"] td[data-count="READY"] a').inner_text() == "1"

    TaskExecution.objects.filter(pk=run.pk).update(status=State.SUCCESSFUL,
                                                   started_at=timezone.now(),
                                                   finished_at=timezone.now())
    page.wait_for_selector('#gyrinx-overview[data-active="false"]', timeout=10_000)
    assert page.locator('tr[data-task="add"] td[data-count="SUCCESSFUL"]').inner_text() == "1"


# --- The sample site ----------------------------------------------------------------------

def test_sample_site_overview_shows_scheduled_runs_and_failures_after_setup(sample_site_env):
    """What scripts/sample.sh does before runserver, then the overview as the admin sees it."""
    manage(sample_site_env, "migrate", "--verbosity", "0")
    manage(sample_site_env, "sample_setup")
    out = shell(sample_site_env, """
        import re
        from django.test import Client
        from django.test.utils import setup_test_environment

        setup_test_environment()
        client = Client()
        client.login(username="admin", password="admin")
        html = client.get("/admin/gyrinx_tasks/overview/").content.decode()
        for task in ("send_welcome_email", "generate_report", "flaky_sync",
                     "cleanup_old_data", "backfill_statistics"):
            row = re.search(f'data-task="{task}">(.*?)</tr>', html, re.S).group(1)
            cells = {name: re.sub(r"<[^>]+>", " ", text).split()[0]
                     for name, text in re.findall(r'data-count="([^"]+)">(.*?)</td>', row)}
            print(task, cells["total"], cells["FAILED"])
        print("index", "gyrinx-overview" in client.get("/admin/gyrinx_tasks/").content.decode())
    """)
    assert out.splitlines() == [
        "send_welcome_email 37 0",
        "generate_report 13 2",
        "flaky_sync 19 7",
        "cleanup_old_data 3 0",
        "backfill_statistics 37 0",
        "index True",
    ]
