"""Issue 19 items 2 and 4 in a real browser (Debian's Chromium): the overview's 30- and
90-day windows read from rollups after a prune, with time in queue beside run duration, and
a run's waiting, running and backoff spans, at 1280 px (sidebar open) and 390 px, light and
dark. Screenshots: docs/screenshots/overview-rollups-<width>[-dark].png and
run-spans-<width>[-dark].png.
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import retention
from gyrinx_tasks.models import State, TaskExecution, TaskRollup, Trigger
from tests.infra.browser import axe_violations, layout_problems, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.clock, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {1280: 800, 390: 844}
OVERVIEW = "admin:gyrinx_tasks_overview_changelist"


def views(page, url, name, check):
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(url)
        check(page, width)
        assert layout_problems(page) == [], width
        assert axe_violations(page) == [], (width, axe_violations(page))
        save_screenshot(page, f"{name}-{width}")
        save_screenshot(page, f"{name}-{width}", dark=True)


def two_months_of_runs():
    """Sixty days of runs, a few a day per task, with waits and durations that differ."""
    now = timezone.now()
    plan = {"add": (0.05, 0.4, 0.0), "echo": (0.3, 2.5, 0.05), "flaky": (1.5, 30.0, 0.25),
            "report_attempt": (6.0, 0.8, 0.0)}
    runs = []
    for day in range(60):
        for name, (seconds, waited, failing) in plan.items():
            for i in range(4):
                created = now - timedelta(days=day, hours=i * 5 + 1, minutes=day % 50)
                status = State.FAILED if (day * 4 + i) % 100 < failing * 100 else \
                    State.SUCCESSFUL
                started = created + timedelta(seconds=waited * (1 + (day + i) % 4))
                runs.append(TaskExecution(
                    task_name=name, task_path=f"tests.tasks.{name}", status=status,
                    trigger=Trigger.ENQUEUE, created_at=created, enqueued_at=created,
                    attempts=1, gave_up=status == State.FAILED, started_at=started,
                    errors=[{"exception_class_path": "requests.exceptions.ReadTimeout",
                             "attempt": 1, "at": started.isoformat(), "traceback": "..."}]
                    if status == State.FAILED else [],
                    finished_at=started + timedelta(seconds=seconds * (1 + i % 3))))
    TaskExecution.objects.bulk_create(runs)
    return len(runs)


def test_the_long_windows_after_a_prune_with_time_in_queue(admin_page, live_server, settings):
    settings.TASKS_RETENTION = timedelta(days=14)
    total = two_months_of_runs()
    report = retention.prune()
    assert report.deleted > total // 2 and TaskRollup.objects.filter(pruned=True).exists()

    def check(page, width):
        current = page.locator(".gyrinx-windows [aria-current]")
        assert current.inner_text() == "90 days"
        assert page.locator(".gyrinx-rollups-note").is_visible()
        # Every run of the ninety days is counted, the pruned ones from their rollups.
        counted = page.locator('tr[data-task="add"] td[data-count="total"]').inner_text()
        assert counted == str(total // 4)
        queue = page.locator('tr[data-task="echo"] [data-count="queue-p95"]').inner_text()
        assert queue.endswith(" s") and queue != "–"

    url = f"{live_server.url}{reverse(OVERVIEW)}?window=90d"
    views(admin_page, url, "overview-rollups", check)

    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.locator(".gyrinx-windows a", has_text="30 days").click()
    page.wait_for_url("**window=30d")
    assert page.locator(".gyrinx-windows [aria-current]").inner_text() == "30 days"
    assert int(page.locator('tr[data-task="add"] td[data-count="total"]').inner_text()) < \
        total // 4


def test_the_run_page_shows_waiting_running_and_backoff(admin_page, live_server):
    now = timezone.now()
    created = now - timedelta(minutes=3)

    def at(seconds):
        return (created + timedelta(seconds=seconds)).isoformat()

    timeline = [{"at": at(0), "from": "", "to": "READY", "note": "enqueued"},
                {"at": at(1.2), "from": "READY", "to": "RUNNING",
                 "note": "attempt 1 on tasks-00042-abc/instance-1"},
                {"at": at(4.0), "from": "RUNNING", "to": "FAILED",
                 "note": "attempt 1: requests.exceptions.ReadTimeout"},
                {"at": at(14.0), "from": "FAILED", "to": "RUNNING",
                 "note": "attempt 2 on tasks-00042-abc/instance-4"},
                {"at": at(17.0), "from": "RUNNING", "to": "FAILED",
                 "note": "attempt 2: requests.exceptions.ReadTimeout"},
                {"at": at(37.0), "from": "FAILED", "to": "RUNNING",
                 "note": "attempt 3 on tasks-00042-abc/instance-1"},
                {"at": at(37.9), "from": "RUNNING", "to": "SUCCESSFUL"}]
    errors = [{"exception_class_path": "requests.exceptions.ReadTimeout", "attempt": n,
               "at": at(end), "traceback": "Traceback ...\nReadTimeout: upstream too slow"}
              for n, end in ((1, 4.0), (2, 17.0))]
    run = TaskExecution.objects.create(
        task_name="flaky", task_path="tests.tasks.flaky", status=State.SUCCESSFUL,
        created_at=created, enqueued_at=created, started_at=created + timedelta(seconds=1.2),
        finished_at=created + timedelta(seconds=37.9), attempts=3, timeline=timeline,
        errors=errors, message_id="1700000000042", return_value={"charged": True},
        worker_ids=["tasks-00042-abc/instance-1", "tasks-00042-abc/instance-4"])
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_taskexecution_change', args=[run.pk])}"

    def check(page, width):
        spans = page.locator(".gyrinx-spans")
        assert spans.is_visible()
        assert page.locator(".gyrinx-span-row").count() == 6
        kinds = [row.get_attribute("data-kind") for row in
                 page.locator(".gyrinx-span-row").all()]
        assert kinds == ["waiting", "running", "backoff", "running", "backoff", "running"]
        totals = page.locator(".gyrinx-span-totals").inner_text()
        assert "Waiting in queue: 1.2 s" in totals
        assert "Running: 6.7 s" in totals and "Pub/Sub backoff: 30.0 s" in totals
        # The bar is drawn to scale: the backoff parts take most of its width.
        bar = page.locator(".gyrinx-span-bar").bounding_box()
        backoff = sum(part.bounding_box()["width"] for part in
                      page.locator(".gyrinx-span-bar .gyrinx-span-backoff").all())
        assert 0.7 < backoff / bar["width"] < 0.85
        # Right after the attempts, above the errors.
        assert (page.locator(".gyrinx-attempts").bounding_box()["y"]
                < spans.bounding_box()["y"] < page.locator(".gyrinx-errors").bounding_box()["y"])

    views(admin_page, url, "run-spans", check)
