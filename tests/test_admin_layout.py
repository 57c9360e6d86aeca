"""Every admin page of ours at 1280 px with the nav sidebar open and at 390 px, light and dark.

For each page, and each form opened on it: the page does not scroll sideways
(``scrollWidth <= clientWidth``), buttons are on screen or in a box that scrolls, no word is
broken letter by letter, and axe-core finds no serious or critical violation. At 390 px each
page's screenshot is saved as docs/screenshots/<name>-390[-dark].png; the 1280 px ones are
taken by the tests of each page's behaviour.
"""

import secrets
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import KillSwitch, State, SwitchMode, TaskExecution, Trigger
from tests.helpers import make_run
from tests.infra.browser import PHONE, VIEWPORT, axe_violations, layout_problems, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.emulator,
              pytest.mark.django_db(transaction=True)]

LONG_LINE = ("ConnectionError: HTTPSConnectionPool(host='payments.internal.example.com', "
             "port=443): Max retries exceeded with url: /v1/charges/ch_3PqXyZ2eZvKYlo2C1a2b3c4d")


def history(now):
    """Runs, switches and a retry, as an incident might leave them."""
    failed = make_run("explode", State.FAILED, attempts=3, message_id="1234567890123456",
                      started_at=now - timedelta(minutes=9), worker_ids=["tasks-00042-abc"],
                      finished_at=now - timedelta(minutes=8, seconds=31), errors=[
                          {"exception_class_path": "builtins.ConnectionError", "attempt": n,
                           "at": (now - timedelta(minutes=9 - n)).isoformat(),
                           "traceback": "Traceback (most recent call last):\n  File "
                                        '"/app/tests/tasks.py", line 30, in explode\n'
                                        + LONG_LINE}
                          for n in (1, 2, 3)])
    TaskExecution.objects.filter(pk=failed.pk).update(created_at=now - timedelta(minutes=10))
    make_run("explode", State.READY, trigger=Trigger.RETRY, retry_of=failed)
    for minutes in range(1, 30, 3):
        make_run("add", State.SUCCESSFUL, args=[minutes, 1],
                 started_at=now - timedelta(minutes=minutes),
                 finished_at=now - timedelta(minutes=minutes) + timedelta(seconds=0.4))
    make_run("flaky", State.RUNNING, started_at=now - timedelta(seconds=40), attempts=2)
    make_run("report_attempt", State.READY)
    make_run("echo", State.REJECTED, raw_message='{"task_name": "echo", "args": "not a list"}')
    make_run("nightly_cleanup", State.SUCCESSFUL, trigger=Trigger.SCHEDULE,
             started_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=2))
    KillSwitch.objects.create(
        task_name="flaky", enabled=False, mode=SwitchMode.HOLD, updated_by="alice",
        off_since=now - timedelta(hours=1),
        reason="Payments API answers 503 since the 14:00 deploy; holding until they roll back")
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.SKIP,
                              updated_by="bob", off_since=now, reason="noisy")
    KillSwitch.objects.create(task_name="retired_task", enabled=False, mode=SwitchMode.SKIP,
                              updated_by="carol", off_since=now, reason="renamed")
    return failed


def open_turn_off_form(page):
    page.locator('#killswitch-add summary').click()
    page.locator('#killswitch-add input[name="reason"]').wait_for()


def open_provision_confirm(page):
    page.locator(".gyrinx-provision-now").click()
    page.locator(".gyrinx-todo").wait_for(timeout=30_000)


def retry_confirmation(page, live_server, run):
    """Post "Retry selected" across the failed runs, as the changelist's form does."""
    page.goto(f"{live_server.url}{reverse('admin:gyrinx_tasks_taskexecution_changelist')}"
              "?status=FAILED")
    page.evaluate("""(pk) => {
        const form = document.createElement('form');
        form.method = 'post';
        form.action = location.pathname + location.search;
        const token = document.querySelector('[name=csrfmiddlewaretoken]').value;
        for (const [name, value] of [['csrfmiddlewaretoken', token],
                ['action', 'retry_selected'], ['select_across', '1'], ['index', '0'],
                ['_selected_action', String(pk)]]) {
            const input = document.createElement('input');
            input.type = 'hidden'; input.name = name; input.value = value;
            form.append(input);
        }
        document.body.append(form);
        form.submit();
    }""", run.pk)
    page.locator(".gyrinx-confirm").wait_for()


@pytest.mark.parametrize("viewport", [VIEWPORT, PHONE], ids=["1280px", "390px"])
def test_every_page_holds_up_at_this_width_light_and_dark(
        viewport, admin_page, live_server, pubsub_emulator, settings, monkeypatch):
    settings.TASKS_ENVIRONMENT = "layout" + secrets.token_hex(4)  # nothing provisioned yet
    settings.TASKS_VERIFY_OIDC = False
    settings.TASKS_EMULATOR_PUSH_ENDPOINT = f"{live_server.url}/tasks/pubsub/"
    monkeypatch.setenv("ENABLE_ECHO", "0")  # an environment switch overriding the database
    failed = history(timezone.now())
    LogEntry.objects.all().delete()
    page = admin_page
    page.set_viewport_size(viewport)
    phone = viewport == PHONE
    base = live_server.url
    switch = KillSwitch.objects.get(task_name="flaky")

    pages = [
        ("overview-app-index", reverse("admin:app_list", args=["gyrinx_tasks"]),
         '#gyrinx-overview tr[data-task="add"]', None),
        ("overview", reverse("admin:gyrinx_tasks_overview_changelist"), None, None),
        ("runs-changelist", reverse("admin:gyrinx_tasks_taskexecution_changelist"), None, None),
        ("run-detail", reverse("admin:gyrinx_tasks_taskexecution_change", args=[failed.pk]),
         None, None),
        ("export", reverse("admin:gyrinx_tasks_taskexecution_export") + "?status=FAILED",
         None, None),
        ("kill-switches", reverse("admin:gyrinx_tasks_killswitch_changelist"), None,
         open_turn_off_form),
        ("kill-switch-change", reverse("admin:gyrinx_tasks_killswitch_change",
                                       args=[switch.pk]), None, None),
        ("scheduled-jobs", reverse("admin:gyrinx_tasks_scheduledjob_changelist"), None, None),
        ("provisioning", reverse("admin:gyrinx_tasks_provisioningstatus_changelist"),
         ".gyrinx-plan", open_provision_confirm),
    ]

    problems = []

    def check(name, opened=""):
        where = f"{name}{' (' + opened + ')' if opened else ''} at {viewport['width']} px"
        if not phone and name != "overview-app-index":  # Django shows no sidebar on app index
            assert page.locator("#nav-sidebar").is_visible(), f"{where}: no nav sidebar"
        # The admin's links fade their colour in (a CSS transition): measure the end state.
        page.add_style_tag(content="*, *::before { transition: none !important; }")
        for dark in (False, True):
            page.emulate_media(color_scheme="dark" if dark else "light")
            scheme = "dark" if dark else "light"
            problems.extend(f"{where}, {scheme}: {p}" for p in layout_problems(page))
            problems.extend(f"{where}, {scheme}: axe {v}" for v in axe_violations(page))
        page.emulate_media(color_scheme="light")

    for name, path, ready, open_form in pages:
        page.goto(f"{base}{path}")
        if ready:
            page.locator(ready).first.wait_for(timeout=30_000)
        check(name)
        if open_form is not None:
            open_form(page)
            check(name, "form open")
            if not phone:
                save_screenshot(page, f"{name}-form")
        if phone:
            save_screenshot(page, f"{name}-390")
            save_screenshot(page, f"{name}-390", dark=True)

    retry_confirmation(page, live_server, failed)
    check("retry-confirm")
    if phone:
        save_screenshot(page, "retry-confirm-390")
        save_screenshot(page, "retry-confirm-390", dark=True)

    assert not problems, "\n".join(dict.fromkeys(problems))  # each problem once
    # Looking changed nothing.
    assert TaskExecution.objects.filter(trigger=Trigger.RETRY).count() == 1
    assert not LogEntry.objects.exists()
