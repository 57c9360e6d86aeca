"""Schedule health in the admin: a badge per job on the scheduled-jobs page, a count on the
overview linking there, and both in a real browser at 1280 and 390 px, light and dark."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import State, TaskExecution, Trigger
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.scheduling.cron import recent_fire_times
from gyrinx_tasks.scheduling.health import Health, schedule_health
from tests.infra.browser import save_screenshot

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

SCHEDULES = reverse("admin:gyrinx_tasks_scheduledjob_changelist")
OVERVIEW = reverse("admin:gyrinx_tasks_overview_changelist")
NIGHTLY = "nightly_cleanup"  # tests/registry.py: "0 3 * * *" in Europe/London
SUMMER = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # only ever inside a frozen clock


def ran(name, at, status=State.SUCCESSFUL):
    route = get_route(name)
    return TaskExecution.objects.create(task_name=name, task_path=route.path,
                                        task_id=route.scheduled_task_id,
                                        trigger=Trigger.SCHEDULE, status=status, created_at=at)


def logged_in(client, admin_user):
    """The client logged in on the moved clock: a session opened before the move may already
    have expired at the time moved to."""
    client.force_login(admin_user)
    return client


def badges(html):
    return re.findall(r'data-health="([a-z_]+)">\s*<span class="gyrinx-status ([a-z-]+)">'
                      r'([a-z ]+)</span>', html)


def test_scheduled_jobs_page_shows_each_jobs_health_badge_and_why(client, admin_user, time_machine):
    time_machine.move_to(SUMMER, tick=False)
    admin_client = logged_in(client, admin_user)
    ran(NIGHTLY, datetime(2026, 6, 10, 2, 12, tzinfo=UTC))  # due 03:00 BST, 12 min late
    html = admin_client.get(SCHEDULES).content.decode()
    assert badges(html) == [("late", "gyrinx-status-skipped", "late")]
    assert ("The run due at Wed 10 Jun 03:00 BST arrived 12 min late (tolerance 5 min)."
            in html)


def test_an_overdue_job_is_red_on_the_page(client, admin_user, time_machine):
    time_machine.move_to(SUMMER, tick=False)
    admin_client = logged_in(client, admin_user)
    html = admin_client.get(SCHEDULES).content.decode()
    assert badges(html) == [("overdue", "gyrinx-status-failed", "overdue now")]


def test_the_page_works_out_health_once_for_all_rows(client, admin_user, time_machine, monkeypatch):
    from gyrinx_tasks.admin import schedules

    time_machine.move_to(SUMMER, tick=False)
    admin_client = logged_in(client, admin_user)
    calls = []
    real = schedules.schedule_health
    monkeypatch.setattr(schedules, "schedule_health",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    admin_client.get(SCHEDULES)
    assert calls == [1]  # once for the page, not once per row


def test_overview_counts_unhealthy_jobs_and_links_to_the_scheduled_jobs_page(
        client, admin_user, time_machine):
    time_machine.move_to(SUMMER, tick=False)
    admin_client = logged_in(client, admin_user)
    html = admin_client.get(OVERVIEW).content.decode()
    item = re.search(r'<li class="gyrinx-schedule-health gyrinx-bad" data-unhealthy="1">'
                     r'.*?</li>', html, re.S)
    assert item, html
    assert f'<a href="{SCHEDULES}"><strong>1</strong> of 1 scheduled job unhealthy</a>' \
        in item.group(0)
    assert "1 overdue now" in item.group(0)

    ran(NIGHTLY, datetime(2026, 6, 10, 2, 0, 30, tzinfo=UTC))  # now on time
    html = admin_client.get(OVERVIEW).content.decode()
    assert ('<li class="gyrinx-schedule-health" data-unhealthy="0">' in html)
    assert "0</strong> of 1 scheduled job unhealthy" in html


def test_overview_leaves_out_schedule_health_for_users_who_cannot_see_scheduled_jobs(
        client, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_overview"))
    client.force_login(user)
    response = client.get(OVERVIEW)
    assert response.status_code == 200
    assert "gyrinx-schedule-health" not in response.content.decode()


@override_settings(TASKS_REGISTRY="tests.registry_that_does_not_exist")
def test_overview_still_loads_when_the_registry_cannot(admin_client):
    response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    assert "gyrinx-schedule-health" not in response.content.decode()


# --- In a browser --------------------------------------------------------------------------------

WIDTHS = {"wide": 1280, "narrow": 390}


def fill_runs_for_every_state(now):
    """Runs that give tests.scheduling_tasks' three jobs three states at any time of day."""
    hourly = get_route("hourly_ping")
    for due in recent_fire_times(hourly, now, since=now - timedelta(hours=25), limit=30):
        ran("hourly_ping", due + timedelta(seconds=4))  # every hour ran: on time
    nightly = get_route("published_nightly")
    [latest] = recent_fire_times(nightly, now, since=now - timedelta(days=2), limit=1)
    ran("published_nightly", latest, status=State.FAILED)  # failed
    # nightly_report has no run: overdue now (or missed, within 5 min of its fire time)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@override_settings(TASKS_REGISTRY="tests.scheduling_tasks")
def test_health_badges_in_a_browser_at_both_widths_light_and_dark(admin_page, live_server,
                                                                  monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "localhost:1")  # no Cloud Scheduler calls
    fill_runs_for_every_state(timezone.now())
    expected = {job.route.name: job for job in schedule_health()}
    assert expected["hourly_ping"].health is Health.ON_TIME
    assert expected["published_nightly"].health is Health.FAILED
    assert expected["nightly_report"].health in (Health.OVERDUE, Health.MISSED)

    page = admin_page
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{live_server.url}{SCHEDULES}")
        for name, job in expected.items():
            badge = page.locator(f'tr[data-task="{name}"] .gyrinx-health .gyrinx-status')
            assert badge.inner_text() == str(job.health)
            assert badge.is_visible()
        red = page.locator('tr[data-task="published_nightly"] .gyrinx-health .gyrinx-status')
        assert red.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(186, 33, 33)"
        # The page never scrolls sideways (wide tables scroll inside themselves).
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        suffix = "" if label == "wide" else "-narrow"
        save_screenshot(page, f"scheduled-jobs-health{suffix}")
        save_screenshot(page, f"scheduled-jobs-health{suffix}", dark=True)

        page.goto(f"{live_server.url}{OVERVIEW}")
        item = page.locator(".gyrinx-schedule-health")
        assert item.get_attribute("data-unhealthy") == "2"
        assert "2 of 3 scheduled jobs unhealthy" in item.inner_text()
        assert "1 failed" in item.inner_text()
        assert item.is_visible()
        save_screenshot(page, f"overview-health{suffix}")
        save_screenshot(page, f"overview-health{suffix}", dark=True)
        item.locator("a").click()
        page.wait_for_url(f"{live_server.url}{SCHEDULES}")
