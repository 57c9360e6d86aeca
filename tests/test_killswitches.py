"""Kill switches: the page of every registry task, its toggles, permissions, skip and hold."""

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import KillSwitch, State, SwitchMode, TaskExecution, Trigger
from gyrinx_tasks.registry import get_routes
from gyrinx_tasks.scheduling.firing import fire_scheduled
from tests import scheduling_tasks, tasks
from tests.helpers import envelope, make_run, package_log_lines, staff_user, task_message

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

PAGE = "admin:gyrinx_tasks_killswitch_changelist"
HTMX = {"HX-Request": "true"}
REGISTRY_TASKS = ["add", "echo", "explode", "flaky", "in_transaction", "nightly_cleanup",
                  "report_attempt"]


def off_url(name):
    return reverse("admin:gyrinx_tasks_killswitch_turn_off", args=[name])


def on_url(name):
    return reverse("admin:gyrinx_tasks_killswitch_turn_on", args=[name])


def states(html):
    """{task name: data-state} for the registry rows of the page or a fragment."""
    return dict(re.findall(r'<tr id="killswitch-([\w]+)" class="[^"]*" data-state="(\w+)"',
                           html))


def text(html):
    """The words of some HTML, without tags and with single spaces."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def table(html, table_id):
    start = html.index(f'id="{table_id}"')
    return html[start:html.index("</table>", start)]


@pytest.fixture
def editor(client):
    user = staff_user("editor", "view_killswitch", "change_killswitch")
    client.force_login(user)
    return user


# --- The page ------------------------------------------------------------------------------

def test_page_lists_every_registry_task_as_on_without_rows(admin_client):
    response = admin_client.get(reverse(PAGE))

    assert response.status_code == 200
    html = response.content.decode()
    assert sorted(route.name for route in get_routes()) == REGISTRY_TASKS
    assert states(html) == {name: "on" for name in REGISTRY_TASKS}
    assert "7 tasks" in html and "7 on, 0 held, 0 skipping" in html
    assert "tests.tasks.nightly_cleanup" in html  # each task's path under its name
    assert 'id="orphan-switches"' not in html
    assert not KillSwitch.objects.exists()  # looking changes nothing


def test_page_says_where_the_switch_cannot_stop_enqueue(admin_client, settings):
    """On a backend without a queue (Django's ImmediateBackend, the local synchronous mode)
    the switch is never asked by .enqueue(): the page says so instead of promising it."""
    settings.TASKS_REGISTRY = "tests.scheduling_tasks"
    KillSwitch.objects.create(task_name="hourly_ping", enabled=False, reason="flaky upstream")

    html = admin_client.get(reverse(PAGE)).content.decode()

    [note] = re.findall(r'<div class="gyrinx-override gyrinx-backend-note">(.*?)</div>', html,
                        re.S)
    assert text(note).startswith("No effect on .enqueue() for hourly_ping, nightly_report, "
                                 "on_demand: their backend, immediate , is not Pub/Sub")
    assert "published_nightly" not in note  # PubSubBackend: the push endpoint asks the switch
    rows = {name: html[html.index(f'id="killswitch-{name}"'):] for name in
            ("hourly_ping", "published_nightly")}
    unqueued = "Not applied to <code>.enqueue()</code> on the <code>immediate</code> backend"
    assert unqueued in rows["hourly_ping"].split("</tr>", 1)[0]
    assert unqueued not in rows["published_nightly"].split("</tr>", 1)[0]
    # What the note says is so: the switched-off task still runs when enqueued.
    scheduling_tasks.RUNS.clear()
    scheduling_tasks.hourly_ping.enqueue()
    assert scheduling_tasks.RUNS == ["hourly_ping"]


def test_page_has_no_backend_note_when_every_task_goes_through_pubsub(admin_client):
    html = admin_client.get(reverse(PAGE)).content.decode()
    assert "gyrinx-backend-note" not in html and "gyrinx-unqueued" not in html


def test_page_reads_all_switches_in_one_query(admin_client):
    for name in ("add", "echo", "flaky"):
        KillSwitch.objects.create(task_name=name, enabled=False, reason="r")
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(reverse(PAGE))
    switch_queries = [q["sql"] for q in queries if "gyrinx_tasks_killswitch" in q["sql"]]
    assert len(switch_queries) == 1


def test_page_shows_state_mode_reason_and_who_changed_it(client, admin_user, time_machine):
    # The page says when held messages start being dropped only while that date is ahead, so
    # the clock is set a day after the switch went off, whatever today's date is; the login
    # comes after, so its session is not already expired on the moved clock.
    off_since = datetime(2026, 11, 23, 14, 2, tzinfo=UTC)
    time_machine.move_to(off_since + timedelta(days=1))
    client.force_login(admin_user)
    admin_client = client
    KillSwitch.objects.create(task_name="add", enabled=False, mode=SwitchMode.SKIP,
                              reason="bad input upstream", updated_by="alice",
                              off_since=off_since)
    KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD,
                              reason="payments API down", updated_by="bob",
                              off_since=off_since)
    KillSwitch.objects.create(task_name="explode", enabled=True, updated_by="carol")

    html = admin_client.get(reverse(PAGE)).content.decode()

    assert states(html) == {**{n: "on" for n in REGISTRY_TASKS},
                                 "add": "skip", "flaky": "hold"}
    assert "5 on, 1 held, 1 skipping" in html
    add_row = html[html.index('id="killswitch-add"'):html.index('id="killswitch-echo"')]
    assert "bad input upstream" in add_row and "by <strong>alice</strong>" in add_row
    assert "off since 23 Nov 2026, 14:02 UTC" in text(add_row)
    assert "recorded as skipped" in add_row
    flaky_row = html[html.index('id="killswitch-flaky"'):html.index('id="killswitch-in_')]
    assert "payments API down" in flaky_row and "by <strong>bob</strong>" in flaky_row
    # How long Pub/Sub keeps what is held: 7 days from publishing (the default retention).
    assert "Held since 23 Nov 2026, 14:02 UTC" in flaky_row
    assert "dropped from <strong>30 Nov 2026, 14:02 UTC</strong>" in flaky_row
    explode_row = html[html.index('id="killswitch-explode"'):html.index('id="killswitch-flaky"')]
    assert "by <strong>carol</strong>" in explode_row  # on, but someone switched it


def test_the_counts_reload_as_a_fragment(admin_client):
    KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD, reason="r")
    page = admin_client.get(reverse(PAGE)).content.decode()
    assert 'hx-trigger="killswitch-changed from:body"' in page
    fragment = admin_client.get(reverse(PAGE), {"fragment": "summary"}, headers=HTMX)
    html = fragment.content.decode().strip()
    assert html.startswith('<p id="switch-summary"') and "<html" not in html
    assert "6 on, 1 held, 0 skipping" in text(html)


def test_a_long_hold_says_messages_are_being_dropped(admin_client):
    KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD,
                              reason="x", off_since=timezone.now() - timedelta(days=8))
    html = admin_client.get(reverse(PAGE)).content.decode()
    assert "gyrinx-retention-late" in html
    assert "Pub/Sub has been dropping held messages since" in html


def test_environment_switch_is_shown_and_overrides_the_database(admin_client, monkeypatch):
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.HOLD, reason="x")
    monkeypatch.setenv("ENABLE_ECHO", "false")
    html = admin_client.get(reverse(PAGE)).content.decode()
    assert states(html)["echo"] == "env"
    assert "<code>ENABLE_ECHO=false</code> switches this task off and overrides the database" \
        in html
    assert "The database switch (hold) applies once the variable is unset." in html
    assert "1 off by environment variable" in html

    monkeypatch.setenv("ENABLE_ECHO", "1")
    html = admin_client.get(reverse(PAGE)).content.decode()
    assert states(html)["echo"] == "hold"
    assert "overrides the database" not in html

    monkeypatch.delenv("ENABLE_ECHO")
    assert "not set (on)" in admin_client.get(reverse(PAGE)).content.decode()


def test_switches_of_tasks_gone_from_the_registry_are_listed_apart(admin_client):
    retired = KillSwitch.objects.create(task_name="retired_task", enabled=False, reason="gone")
    KillSwitch.objects.create(task_name="add", enabled=False, reason="r")

    html = admin_client.get(reverse(PAGE)).content.decode()

    assert "retired_task" not in table(html, "kill-switches")
    orphans = table(html, "orphan-switches")
    assert "retired_task" in orphans and "gone" in orphans
    assert "add" not in orphans
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[retired.pk])
    assert f'href="{delete}"' in orphans
    assert "Switches for tasks no longer in the registry" in html


def test_orphan_switch_is_deleted_with_the_delete_permission_and_audited(client):
    retired = KillSwitch.objects.create(task_name="retired_task", enabled=False, reason="gone")
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[retired.pk])
    viewer = staff_user("viewer", "view_killswitch", "change_killswitch")
    client.force_login(viewer)
    assert f'href="{delete}"' not in client.get(reverse(PAGE)).content.decode()
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert KillSwitch.objects.filter(pk=retired.pk).exists()

    cleaner = staff_user("cleaner", "view_killswitch", "delete_killswitch")
    client.force_login(cleaner)
    assert f'href="{delete}"' in client.get(reverse(PAGE)).content.decode()
    response = client.post(delete, {"post": "yes"})
    assert response.status_code == 302 and response.url == reverse(PAGE)
    assert not KillSwitch.objects.exists()
    entry = LogEntry.objects.get()
    assert (entry.action_flag, entry.user_id, entry.object_repr) == (
        DELETION, cleaner.pk, "retired_task: off")


def test_a_registry_that_fails_to_load_shows_its_error(admin_client):
    KillSwitch.objects.create(task_name="add", enabled=False, reason="r")
    with override_settings(TASKS_REGISTRY="tests.no_such_registry"):
        response = admin_client.get(reverse(PAGE))
        refused = admin_client.post(off_url("add"), {"reason": "x", "mode": "skip"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "TASKS_REGISTRY &#x27;tests.no_such_registry&#x27; cannot be imported" in html
    assert "Switches in the database" in html and "add" in table(html, "orphan-switches")
    assert refused.status_code == 302
    assert KillSwitch.objects.get().reason == "r"


# --- Turning off and on --------------------------------------------------------------------

def test_turn_off_in_hold_mode_through_htmx_swaps_the_row(client, editor):
    response = client.post(off_url("flaky"), {"reason": "payments API down", "mode": "hold"},
                           headers=HTMX)

    assert response.status_code == 200
    assert response["HX-Trigger"] == "killswitch-changed"  # the counts above reload
    html = response.content.decode().strip()
    assert html.startswith('<tr id="killswitch-flaky"')  # the row alone, not the page
    assert "<html" not in html
    assert states(html) == {"flaky": "hold"}
    assert "Turn on" in html and "payments API down" in html
    switch = KillSwitch.objects.get()
    assert (switch.task_name, switch.enabled, switch.mode, switch.reason, switch.updated_by) == (
        "flaky", False, SwitchMode.HOLD, "payments API down", "editor")
    assert timezone.now() - switch.off_since < timedelta(minutes=1)
    entry = LogEntry.objects.get()
    assert (entry.user_id, entry.action_flag, entry.object_id) == (editor.pk, CHANGE,
                                                                  str(switch.pk))
    assert entry.get_change_message() == "Turned off (hold): payments API down"


def test_turn_on_through_htmx_is_one_click(client, editor):
    KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD,
                              reason="x", off_since=timezone.now())

    response = client.post(on_url("flaky"), headers=HTMX)

    assert response.status_code == 200
    assert states(response.content.decode()) == {"flaky": "on"}
    switch = KillSwitch.objects.get()
    assert (switch.enabled, switch.off_since, switch.reason, switch.updated_by) == (
        True, None, "", "editor")
    assert LogEntry.objects.get().get_change_message() == "Turned on."


def test_turning_off_needs_a_reason(client, editor):
    response = client.post(off_url("add"), {"reason": "  ", "mode": "hold"}, headers=HTMX)

    assert response.status_code == 200  # htmx swaps only 2xx: the errors show in the row
    html = response.content.decode()
    assert "Give a reason, for whoever looks next." in html
    assert '<details class="gyrinx-turn-off" open>' in html
    assert 'value="hold" name="mode"' in html or 'name="mode" value="hold"' in html
    assert states(html) == {"add": "on"}

    plain = client.post(off_url("add"), {"reason": "", "mode": "skip"})
    assert plain.status_code == 400
    page = plain.content.decode()
    assert "Give a reason, for whoever looks next." in page
    assert states(page)["add"] == "on" and len(states(page)) == len(REGISTRY_TASKS)

    bad_mode = client.post(off_url("add"), {"reason": "r", "mode": "pause"}, headers=HTMX)
    assert "Choose skip or hold." in bad_mode.content.decode()
    assert not KillSwitch.objects.exists()
    assert not LogEntry.objects.exists()


def test_plain_posts_work_without_javascript(client, editor):
    response = client.post(off_url("echo"), {"reason": "noisy", "mode": "skip"})
    assert response.status_code == 302 and response.url == reverse(PAGE)
    switch = KillSwitch.objects.get()
    assert (switch.enabled, switch.mode, switch.reason) == (False, SwitchMode.SKIP, "noisy")
    page = client.get(response.url).content.decode()
    assert "Turned off echo (skip): noisy" in page
    assert states(page)["echo"] == "skip"

    response = client.post(on_url("echo"))
    assert response.status_code == 302
    assert KillSwitch.objects.get().enabled is True
    assert "Turned on echo." in client.get(response.url).content.decode()
    assert LogEntry.objects.count() == 2


def test_turning_on_a_switch_that_is_on_changes_nothing(client, editor):
    response = client.post(on_url("add"))
    assert response.status_code == 302
    assert not KillSwitch.objects.exists()
    assert not LogEntry.objects.exists()
    assert "Nothing changed: add was already so." in client.get(response.url).content.decode()


def test_switching_from_skip_to_hold_restarts_the_hold_clock(client, editor):
    long_ago = timezone.now() - timedelta(days=3)
    KillSwitch.objects.create(task_name="add", enabled=False, mode=SwitchMode.SKIP,
                              reason="r", off_since=long_ago)
    client.post(off_url("add"), {"reason": "r", "mode": "hold"}, headers=HTMX)
    switch = KillSwitch.objects.get()
    assert switch.mode == SwitchMode.HOLD and switch.off_since > long_ago


def test_a_task_not_in_the_registry_cannot_be_switched(client, editor):
    response = client.post(off_url("not_a_task"), {"reason": "x", "mode": "skip"},
                           headers=HTMX)
    assert response.status_code == 200 and response["HX-Refresh"] == "true"
    assert "No route in TASKS_REGISTRY is named" in client.get(reverse(PAGE)).content.decode()

    plain = client.post(on_url("not_a_task"))
    assert plain.status_code == 302
    assert not KillSwitch.objects.exists()
    assert not LogEntry.objects.exists()


def test_get_changes_nothing(client, editor):
    assert client.get(off_url("add"), {"reason": "x", "mode": "skip"}).status_code == 405
    assert client.get(on_url("add")).status_code == 405
    assert not KillSwitch.objects.exists()


# --- Permissions ---------------------------------------------------------------------------

def test_staff_without_change_permission_see_no_buttons_and_get_403(client):
    viewer = staff_user("viewer", "view_killswitch")
    client.force_login(viewer)
    KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD,
                              reason="held")

    html = client.get(reverse(PAGE)).content.decode()
    assert states(html)["flaky"] == "hold"  # they see the state
    assert "Turn off" not in html and "Turn on" not in html
    assert "/switch/" not in html  # no form points at the toggles

    assert client.post(off_url("add"), {"reason": "x", "mode": "skip"}).status_code == 403
    assert client.post(off_url("add"), {"reason": "x", "mode": "skip"},
                       headers=HTMX).status_code == 403
    assert client.post(on_url("flaky")).status_code == 403
    switch = KillSwitch.objects.get()
    assert (switch.task_name, switch.enabled) == ("flaky", False)
    assert not LogEntry.objects.exists()


def test_staff_without_view_permission_cannot_see_the_page(client):
    client.force_login(staff_user("nobody"))
    assert client.get(reverse(PAGE)).status_code == 403
    assert client.post(on_url("add")).status_code == 403


def test_staff_with_change_permission_see_the_buttons(client, editor):
    KillSwitch.objects.create(task_name="flaky", enabled=False, reason="held")
    html = client.get(reverse(PAGE)).content.decode()
    assert html.count("Turn off…") == len(REGISTRY_TASKS) - 1
    assert html.count('class="button gyrinx-turn-on"') == 1
    assert f'hx-post="{on_url("flaky")}"' in html
    assert "X-CSRFToken" in html  # htmx posts carry the token


# --- Django's add and change forms ---------------------------------------------------------

def test_a_kill_switch_is_created_for_a_registry_task_only(admin_client):
    add_url = reverse("admin:gyrinx_tasks_killswitch_add")
    form_page = admin_client.get(add_url).content.decode()
    for name in ("add", "echo", "nightly_cleanup"):
        assert f'<option value="{name}">' in form_page

    refused = admin_client.post(add_url, {"task_name": "not_a_task", "reason": "x"})
    assert refused.status_code == 200
    assert "Select a valid choice" in refused.content.decode()
    no_reason = admin_client.post(add_url, {"task_name": "echo", "mode": "hold"})
    assert "Give a reason when switching a task off." in no_reason.content.decode()
    assert not KillSwitch.objects.exists()

    created = admin_client.post(add_url, {"task_name": "echo", "reason": "noisy",
                                          "mode": "hold"})
    assert created.status_code == 302 and created.url == reverse(PAGE)
    switch = KillSwitch.objects.get()
    assert (switch.task_name, switch.enabled, switch.reason, switch.mode, switch.updated_by) == (
        "echo", False, "noisy", SwitchMode.HOLD, "admin")
    assert switch.off_since is not None

    duplicate = admin_client.post(add_url, {"task_name": "echo", "enabled": "on"})
    assert "Kill switch with this Task name already exists." in duplicate.content.decode()
    assert KillSwitch.objects.count() == 1


def test_a_switch_for_a_task_gone_from_the_registry_stays_editable(admin_client):
    switch = KillSwitch.objects.create(task_name="retired_task", enabled=False, reason="r",
                                       off_since=timezone.now())
    change = reverse("admin:gyrinx_tasks_killswitch_change", args=[switch.pk])
    assert "retired_task (not in the registry)" in admin_client.get(change).content.decode()
    response = admin_client.post(change, {"task_name": "retired_task", "enabled": "on"})
    assert response.status_code == 302
    switch.refresh_from_db()
    assert (switch.enabled, switch.off_since, switch.mode, switch.updated_by) == (
        True, None, SwitchMode.SKIP, "admin")
    assert LogEntry.objects.get().action_flag == CHANGE


def test_changing_an_off_switch_from_skip_to_hold_restarts_its_off_since(admin_client):
    # Held messages are counted against Pub/Sub's retention from when the hold began, not
    # from when the task was first switched off in skip.
    long_ago = timezone.now() - timedelta(days=8)
    switch = KillSwitch.objects.create(task_name="echo", enabled=False, reason="r",
                                       mode=SwitchMode.SKIP, off_since=long_ago)
    change = reverse("admin:gyrinx_tasks_killswitch_change", args=[switch.pk])

    response = admin_client.post(change, {"task_name": "echo", "mode": SwitchMode.HOLD,
                                          "reason": "r"})

    assert response.status_code == 302
    switch.refresh_from_db()
    assert switch.mode == SwitchMode.HOLD and not switch.enabled
    assert switch.off_since > long_ago + timedelta(days=7)


# --- The push endpoint: skip and hold ------------------------------------------------------

PUSH = "/tasks/pubsub/"


def push(client, body):
    return client.post(PUSH, body, content_type="application/json")


def echo_message(task_id="t-1", *args):
    return {"task_id": task_id, "task_name": "echo", "args": list(args or ["x"]),
            "kwargs": {}, "enqueued_at": "2026-11-23T10:00:00+00:00"}


def hold(task_name="echo"):
    return KillSwitch.objects.create(task_name=task_name, enabled=False, mode=SwitchMode.HOLD,
                                     reason="incident 7", off_since=timezone.now())


def test_held_delivery_is_not_acknowledged_not_run_and_not_skipped(client, no_oidc):
    hold()
    tasks.CALLS.clear()

    response = push(client, envelope(echo_message()))

    assert response.status_code == 429  # not an ack status: Pub/Sub keeps the message
    assert response.json()["outcome"] == "held"
    assert "hold" in response.json()["detail"]
    assert tasks.CALLS == []
    execution = TaskExecution.objects.get()
    assert execution.status == State.READY
    assert not TaskExecution.objects.filter(status=State.SKIPPED).exists()


def test_held_redeliveries_write_nothing(client, no_oidc):
    hold()
    run = make_run("echo", args=["x"])  # enqueued: READY, one timeline entry
    body = envelope(echo_message(run.result_id))
    push(client, body)
    before = TaskExecution.objects.values().get()

    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert push(client, body).status_code == 429

    writes = [q["sql"] for q in queries
              if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []
    after = TaskExecution.objects.values().get()
    assert after == {**before, "message_id": after["message_id"]}
    assert len(after["timeline"]) == 1


def test_held_messages_run_once_switched_on(client, no_oidc):
    switch = hold()
    tasks.CALLS.clear()
    body = envelope(echo_message("t-9", "kept"))
    assert push(client, body).status_code == 429

    switch.enabled = True
    switch.save()
    response = push(client, body)

    assert response.status_code == 200
    assert tasks.CALLS == [(("kept",), {})]
    execution = TaskExecution.objects.get()
    assert (execution.status, execution.attempts) == (State.SUCCESSFUL, 1)
    assert [step["to"] for step in execution.timeline] == ["READY", "RUNNING", "SUCCESSFUL"]
    assert push(client, body).json()["outcome"] == "duplicate"  # not run again
    assert len(tasks.CALLS) == 1


def test_skip_mode_acknowledges_and_records_skipped(client, no_oidc):
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.SKIP,
                              reason="r")
    tasks.CALLS.clear()
    response = push(client, envelope(echo_message()))
    assert response.status_code == 200  # an ack (200, not 202: see gyrinx_tasks/views.py)
    assert response.json()["outcome"] == "skipped"
    assert tasks.CALLS == []
    assert TaskExecution.objects.get().status == State.SKIPPED


def test_environment_switch_skips_even_when_the_database_holds(client, no_oidc, monkeypatch):
    hold()
    monkeypatch.setenv("ENABLE_ECHO", "off")
    response = push(client, envelope(echo_message()))
    assert response.json()["outcome"] == "skipped" and response.status_code == 200
    execution = TaskExecution.objects.get()
    assert (execution.status, execution.status_detail) == (
        State.SKIPPED, "Kill switch ENABLE_ECHO is off.")


def stuck_run():
    """A run left RUNNING by a worker that died, its ack deadline long past."""
    run = make_run("echo", State.RUNNING, args=["x"], attempts=1)
    TaskExecution.objects.filter(pk=run.pk).update(
        last_attempted_at=timezone.now() - timedelta(hours=1))
    return run


def test_switched_off_stuck_run_is_skipped_not_a_500(client, no_oidc):
    run = stuck_run()
    KillSwitch.objects.create(task_name="echo", enabled=False, reason="r")

    response = push(client, envelope(echo_message(run.result_id)))

    assert response.status_code == 200 and response.json()["outcome"] == "skipped"
    run.refresh_from_db()
    assert run.status == State.SKIPPED
    assert [step["to"] for step in run.timeline][-2:] == ["FAILED", "SKIPPED"]
    assert run.errors[-1]["exception_class_path"] == "builtins.TimeoutError"
    assert "did not finish within the ack deadline" in run.errors[-1]["traceback"]


def test_held_stuck_run_stays_running_until_switched_on(client, no_oidc):
    run = stuck_run()
    switch = hold()
    body = envelope(echo_message(run.result_id))
    assert push(client, body).status_code == 429
    run.refresh_from_db()
    assert run.status == State.RUNNING and run.attempts == 1

    switch.enabled = True
    switch.save()
    assert push(client, body).status_code == 200
    run.refresh_from_db()
    assert (run.status, run.attempts) == (State.SUCCESSFUL, 2)


# --- Scheduled firing ----------------------------------------------------------------------

def test_held_schedule_on_a_backend_without_a_queue_is_skipped_and_says_why():
    from gyrinx_tasks import TaskRoute

    nightly = TaskRoute(scheduling_tasks.nightly_report, schedule="30 1 * * *")
    hold("nightly_report")
    scheduling_tasks.RUNS.clear()
    execution = TaskExecution.objects.get(result_id=fire_scheduled(nightly))
    assert scheduling_tasks.RUNS == []
    assert (execution.status, execution.trigger) == (State.SKIPPED, Trigger.SCHEDULE)
    assert "(hold), but the 'immediate' backend has no queue" in execution.status_detail


def test_held_schedule_on_pubsub_is_published_to_be_held_there(fake_publisher):
    from gyrinx_tasks import TaskRoute

    nightly = TaskRoute(scheduling_tasks.published_nightly, schedule="0 3 * * *")
    hold("published_nightly")
    message_id = fire_scheduled(nightly)
    assert message_id == "msg-1"
    assert len(fake_publisher.published) == 1
    assert not TaskExecution.objects.exists()  # the push endpoint records it, and holds it



# --- In a real browser ---------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_turn_a_switch_off_in_hold_mode_and_on_again_in_the_browser(admin_page, live_server,
                                                                     monkeypatch):
    from tests.infra.browser import save_screenshot

    page = admin_page
    KillSwitch.objects.create(task_name="add", enabled=False, mode=SwitchMode.SKIP,
                              reason="bad input upstream (incident 41)", updated_by="alice",
                              off_since=timezone.now() - timedelta(hours=3))
    KillSwitch.objects.create(task_name="retired_report", enabled=False, mode=SwitchMode.SKIP,
                              reason="replaced by nightly_cleanup", updated_by="bob",
                              off_since=timezone.now() - timedelta(days=40))
    monkeypatch.setenv("ENABLE_ECHO", "false")  # the live server runs in this process

    page.goto(f"{live_server.url}{reverse(PAGE)}")
    page.evaluate("window.notReloaded = true")  # gone if the browser loads a new page
    row = page.locator("#killswitch-flaky")
    old_row = row.element_handle()
    assert row.get_attribute("data-state") == "on"

    row.locator("summary", has_text="Turn off").click()
    row.get_by_label("Reason").fill("payments API down (incident 42)")
    row.get_by_label("Hold: keep the messages in Pub/Sub until switched on").check()
    row.get_by_role("button", name="Turn off", exact=True).click()

    page.wait_for_selector('#killswitch-flaky[data-state="hold"]')
    assert page.evaluate("window.notReloaded") is True  # swapped by htmx, no navigation
    page.wait_for_function(
        "document.getElementById('switch-summary').innerText.includes('1 held')")
    assert old_row.evaluate("element => element.isConnected") is False  # the row was replaced
    held = page.locator("#killswitch-flaky")
    assert "payments API down (incident 42)" in held.inner_text()
    assert "Held since" in held.inner_text()
    switch = KillSwitch.objects.get(task_name="flaky")
    assert (switch.enabled, switch.mode, switch.updated_by) == (False, SwitchMode.HOLD, "admin")

    assert page.locator("#killswitch-echo").get_attribute("data-state") == "env"
    assert "retired_report" in page.locator("#orphan-switches").inner_text()
    page.mouse.move(0, 0)  # no hover highlight in the picture
    save_screenshot(page, "kill-switches")
    save_screenshot(page, "kill-switches", dark=True)

    held.get_by_role("button", name="Turn on").click()
    page.wait_for_selector('#killswitch-flaky[data-state="on"]')
    assert page.evaluate("window.notReloaded") is True
    assert KillSwitch.objects.get(task_name="flaky").enabled is True
    assert [entry.get_change_message() for entry in LogEntry.objects.order_by("id")] == [
        "Turned off (hold): payments API down (incident 42)", "Turned on."]


# --- Only change_killswitch switches a task (issue 17, item 11) -----------------------------
# Before: Django's add view let add_killswitch alone create a switch that is off, and its
# delete view let delete_killswitch alone delete one that is off, turning the task back on.

def test_add_permission_alone_cannot_switch_a_task_off(client):
    client.force_login(staff_user("adder", "view_killswitch", "add_killswitch"))
    add_url = reverse("admin:gyrinx_tasks_killswitch_add")
    assert client.get(add_url).status_code == 403
    response = client.post(add_url, {"task_name": "echo", "reason": "sneaky", "mode": "skip"})
    assert response.status_code == 403
    assert not KillSwitch.objects.exists() and not LogEntry.objects.exists()


def test_add_and_change_permissions_together_may_use_the_add_form(client):
    user = staff_user("editor", "view_killswitch", "add_killswitch", "change_killswitch")
    client.force_login(user)
    response = client.post(reverse("admin:gyrinx_tasks_killswitch_add"),
                           {"task_name": "echo", "reason": "noisy", "mode": "skip"})
    assert response.status_code == 302
    assert not KillSwitch.objects.get(task_name="echo").enabled
    assert LogEntry.objects.get().user_id == user.pk


def test_delete_permission_alone_cannot_turn_a_task_back_on(client):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False, reason="incident 7",
                                       off_since=timezone.now())
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    client.force_login(staff_user("cleaner", "view_killswitch", "delete_killswitch"))
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert not KillSwitch.objects.get(pk=switch.pk).enabled
    assert not LogEntry.objects.exists()


def test_delete_permission_alone_may_delete_a_switch_that_is_on(client):
    # Deleting it changes nothing: a task without a switch is on.
    switch = KillSwitch.objects.create(task_name="echo", enabled=True)
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    client.force_login(staff_user("cleaner", "view_killswitch", "delete_killswitch"))
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not KillSwitch.objects.exists()
    assert LogEntry.objects.get().action_flag == DELETION


def test_deleting_an_off_switch_needs_change_permission_too(client):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False, reason="r")
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    user = staff_user("editor", "view_killswitch", "change_killswitch", "delete_killswitch")
    client.force_login(user)
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not KillSwitch.objects.exists()
    entry = LogEntry.objects.get()
    assert (entry.action_flag, entry.user_id) == (DELETION, user.pk)


def test_a_switch_turned_off_after_the_confirmation_is_not_deleted(client, monkeypatch):
    # The confirmation was shown while the switch was on; it is off when the POST arrives.
    from gyrinx_tasks.admin.killswitches import KillSwitchAdmin

    switch = KillSwitch.objects.create(task_name="echo", enabled=True)
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    client.force_login(staff_user("cleaner", "view_killswitch", "delete_killswitch"))
    original = KillSwitchAdmin.log_deletions

    def turned_off_meanwhile(self, request, queryset):
        KillSwitch.objects.filter(pk=switch.pk).update(enabled=False, reason="incident")
        return original(self, request, queryset)

    monkeypatch.setattr(KillSwitchAdmin, "log_deletions", turned_off_meanwhile)
    assert client.post(delete, {"post": "yes"}).status_code == 403
    # Not deleted, and the deletion's LogEntry is rolled back with it. (The update above ran
    # inside the request's transaction here, so it is rolled back too; from another
    # connection it would stay.)
    assert KillSwitch.objects.filter(pk=switch.pk).exists()
    assert not LogEntry.objects.exists()


def test_while_the_registry_cannot_load_off_switches_are_not_orphans(client):
    switch = KillSwitch.objects.create(task_name="echo", enabled=False, reason="r")
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    client.force_login(staff_user("cleaner", "view_killswitch", "delete_killswitch"))
    with override_settings(TASKS_REGISTRY="tests.no_such_registry"):
        assert client.post(delete, {"post": "yes"}).status_code == 403
    assert KillSwitch.objects.filter(pk=switch.pk).exists()


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _decide mutants 87-99, 140-158: held and skipped deliveries answer with the run and the
# switch's reason, and are logged with the task, the run and that reason.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_oidc", "calls", "fresh_unrecorded")
@pytest.mark.parametrize("mode", [SwitchMode.HOLD, SwitchMode.SKIP])
def test_switched_off_deliveries_are_logged_with_their_run(client, caplog, mode):
    run = TaskExecution.objects.create(task_name="echo", task_path="tests.tasks.echo",
                                       args=["hi"])
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=mode)
    with caplog.at_level(logging.INFO, logger="gyrinx_tasks"):
        response = push(client, envelope(task_message(task_id=run.result_id)))

    held = mode == SwitchMode.HOLD
    detail = ("Kill switch for echo is off in the database (hold): Pub/Sub keeps the message "
              "until it is switched on." if held else
              "Kill switch for echo is off in the database.")
    assert response.json() == {"outcome": "held" if held else "skipped", "detail": detail,
                               "result_id": run.result_id,
                               "status": "READY" if held else "SKIPPED"}
    assert f"{'Held' if held else 'Skipped'} echo ({run.result_id}): {detail}" in package_log_lines(
        caplog)


# --- Environment switches: the documented words ---


# Change caught: an environment-variable switch set to one of the documented "off" words
# being ignored.
@pytest.mark.usefixtures("no_oidc")
@pytest.mark.django_db
@pytest.mark.parametrize("value", ["off", "OFF", "0", "no", " False "])
def test_every_documented_off_word_turns_the_env_switch_off(client, calls, monkeypatch, value):
    monkeypatch.setenv("ENABLE_ECHO", value)

    response = push(client, envelope(echo_message("t-echo", "hi")))

    assert response.status_code == 200
    assert TaskExecution.objects.get().status == State.SKIPPED
    assert calls == []


@pytest.mark.usefixtures("no_oidc")
@pytest.mark.django_db
@pytest.mark.parametrize("value", ["on", "1", "true", "yes", ""])
def test_other_env_switch_values_leave_the_task_on(client, calls, monkeypatch, value):
    monkeypatch.setenv("ENABLE_ECHO", value)

    assert push(client, envelope(echo_message("t-echo", "hi"))).status_code == 200
    assert calls == [(("hi",), {})]
