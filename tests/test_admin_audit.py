"""The admin's audit log: every writer goes through gyrinx_tasks/admin/base.py and writes the
same LogEntry fields it wrote before they shared one builder (who, which content type, which
object, its name, the action and the message)."""

import json

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse

from gyrinx_tasks.admin.base import audit, audit_many, reword_audit
from gyrinx_tasks.models import KillSwitch, ScheduledJob, State, SwitchMode, TaskExecution
from tests.helpers import make_run, staff_user

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"
STREAM = "admin:gyrinx_tasks_taskexecution_export_stream"


def fields(entry):
    """What an entry says, without its id and time."""
    return (entry.user_id, entry.content_type.model_class(), entry.object_id, entry.object_repr,
            entry.action_flag, entry.change_message)


def entries():
    return [fields(entry) for entry in LogEntry.objects.order_by("object_id", "pk")]


def test_a_bulk_retry_writes_one_change_entry_per_run(client, fake_publisher):
    user = staff_user("retrier", "view_taskexecution", "retry_taskexecution")
    client.force_login(user)
    chosen = [make_run("add", State.FAILED, args=[i, i]) for i in range(2)]

    client.post(reverse(CHANGELIST), {"action": "retry_selected", "index": "0",
                                      "_selected_action": [str(run.pk) for run in chosen]})

    new = {run.retry_of_id: run for run in TaskExecution.objects.filter(retry_of__isnull=False)}
    assert entries() == [
        (user.pk, TaskExecution, str(run.pk), str(run)[:200], CHANGE,
         f"Retried as run {new[run.pk].pk} ({new[run.pk].result_id}).")
        for run in sorted(chosen, key=lambda run: str(run.pk))
    ]


def test_a_streamed_export_writes_started_then_completed_with_the_row_count(client):
    user = staff_user("exporter", "view_taskexecution", "export_taskexecution")
    client.force_login(user)
    make_run("add", State.FAILED)
    make_run("echo", State.SUCCESSFUL)

    response = client.post(f"{reverse(STREAM)}?status=FAILED")
    started = (user.pk, TaskExecution, None, "export", CHANGE,
               "Started a streamed CSV export of runs (without payload; filters: "
               "status=FAILED).")
    assert entries() == [started]  # nothing streamed yet: an interrupted download says so
    b"".join(response.streaming_content)

    assert entries() == [started[:5] + (
        "Completed a streamed CSV export of runs (without payload; filters: status=FAILED); "
        "1 row.",)]


def test_a_kill_switch_change_on_its_page_writes_a_change_entry(client):
    user = staff_user("editor", "view_killswitch", "change_killswitch")
    client.force_login(user)

    client.post(reverse("admin:gyrinx_tasks_killswitch_turn_off", args=["flaky"]),
                {"reason": "payments API down", "mode": "hold"}, headers={"HX-Request": "true"})
    client.post(reverse("admin:gyrinx_tasks_killswitch_turn_on", args=["flaky"]),
                headers={"HX-Request": "true"})

    switch = KillSwitch.objects.get()
    assert [fields(entry) for entry in LogEntry.objects.order_by("pk")] == [
        (user.pk, KillSwitch, str(switch.pk), "flaky: off", CHANGE,
         "Turned off (hold): payments API down"),
        (user.pk, KillSwitch, str(switch.pk), "flaky: on", CHANGE, "Turned on."),
    ]


def test_djangos_own_kill_switch_views_write_through_the_same_builder(admin_client):
    user = LogEntry._meta.get_field("user").related_model.objects.get(username="admin")
    add = reverse("admin:gyrinx_tasks_killswitch_add")
    admin_client.post(add, {"task_name": "add", "enabled": "", "mode": SwitchMode.SKIP,
                            "reason": "incident"})
    switch = KillSwitch.objects.get()
    change = reverse("admin:gyrinx_tasks_killswitch_change", args=[switch.pk])
    admin_client.post(change, {"task_name": "add", "enabled": "", "mode": SwitchMode.HOLD,
                               "reason": "incident"})
    repr_before_delete = str(KillSwitch.objects.get())
    delete = reverse("admin:gyrinx_tasks_killswitch_delete", args=[switch.pk])
    admin_client.post(delete, {"post": "yes"})

    added, changed, deleted = LogEntry.objects.order_by("pk")
    assert fields(added) == (user.pk, KillSwitch, str(switch.pk), "add: off", ADDITION,
                             json.dumps([{"added": {}}]))
    assert fields(changed)[:5] == (user.pk, KillSwitch, str(switch.pk), "add: off", CHANGE)
    assert json.loads(changed.change_message) == [{"changed": {"fields": ["Off mode"]}}]
    assert fields(deleted) == (user.pk, KillSwitch, str(switch.pk), repr_before_delete,
                               DELETION, "")


def test_the_builder_names_routes_by_their_page_model_and_refuses_anonymous():
    user = staff_user("someone")
    request = RequestFactory().post("/")
    request.user = user

    entry = audit(request, "nightly_report", "Paused.", model=ScheduledJob)
    assert fields(entry) == (user.pk, ScheduledJob, None, "nightly_report", CHANGE, "Paused.")
    # The proxy model's own content type, not the concrete model's.
    assert entry.content_type == ContentType.objects.get_for_model(
        ScheduledJob, for_concrete_model=False)

    [many] = audit_many(request, TaskExecution, [(7, "run 7", "Retried as run 8 (x).")])
    assert fields(many) == (user.pk, TaskExecution, "7", "run 7", CHANGE,
                            "Retried as run 8 (x).")
    reword_audit(many, "Reworded.")
    assert LogEntry.objects.get(pk=many.pk).change_message == "Reworded."

    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    with pytest.raises(PermissionDenied):
        audit(request, "nightly_report", "Paused.", model=ScheduledJob)
    with pytest.raises(PermissionDenied):
        audit_many(request, TaskExecution, [(7, "run 7", "x")])
    assert LogEntry.objects.count() == 2  # the two written above, no more
