"""GET /tasks/health/ and manage.py tasks_health (gyrinx_tasks/health.py): who may read it,
the reasons, the cost, changes announced once, and the system checks of the thresholds."""

import json
import logging
from datetime import timedelta

import pytest
import time_machine
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gyrinx_tasks import health_view, registry
from gyrinx_tasks.health import health_report
from gyrinx_tasks.health_alerts import (
    check_health,
    health_changed,
    last_known_health,
    record_health,
)
from gyrinx_tasks.models import HealthState, State, TaskExecution, Trigger
from tests.helpers import make_run, postgresql_plan, staff_user

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

URL = "/tasks/health/"
TOKEN = "t0k3n-for-tests-only-0123456789abcdef"


@pytest.fixture(autouse=True)
def health_token(settings):
    settings.TASKS_HEALTH_TOKEN = TOKEN


@pytest.fixture
def fresh_registry():
    registry.clear_cache()
    yield
    registry.clear_cache()


def check(client, token=TOKEN, method="get"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return getattr(client, method)(URL, headers=headers)


def reasons(response):
    return {(r["kind"], r["task"]) for r in response.json()["reasons"]}


def finished(task, status, ago=timedelta(minutes=5), **fields):
    run = make_run(task, status, **fields)
    TaskExecution.objects.filter(pk=run.pk).update(created_at=timezone.now() - ago)
    return run


def will_retry(task, **fields):
    """A FAILED attempt that Pub/Sub redelivers (TaskExecution.will_retry)."""
    run = finished(task, State.FAILED, attempts=1, message_id="m-1", **fields)
    assert run.will_retry
    return run


def gave_up(task, **fields):
    return finished(task, State.FAILED, attempts=3, message_id="m-1", gave_up=True, **fields)


# --- Who may read it ------------------------------------------------------------------------

def test_a_new_site_with_no_history_is_healthy(client):
    # The test registry has a daily scheduled job that has never fired: no history to miss.
    response = check(client)
    assert response.status_code == 200
    body = response.json()
    assert body["healthy"] is True and body["reasons"] == []
    assert body["stuck"] == {"total": 0, "running": 0, "unconfirmed": 0, "waiting": 0}
    assert response["Cache-Control"] == "no-store"
    assert not HealthState.objects.exists()  # nothing written while healthy


def test_machines_need_the_token(client, settings):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}):
        response = client.get(URL, headers=headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "healthy" not in response.json()
    assert check(client).status_code == 200
    assert check(client, token=f"  {TOKEN}").status_code == 200  # spaces around it are fine
    # No token configured: no bearer token opens it, not even an empty one.
    settings.TASKS_HEALTH_TOKEN = ""
    assert client.get(URL, headers={"Authorization": "Bearer "}).status_code == 401
    assert check(client).status_code == 401


def test_staff_may_read_it_with_their_session_and_others_may_not(client, settings):
    settings.TASKS_HEALTH_TOKEN = ""
    user = staff_user("not_staff")
    user.is_staff = False
    user.save()
    client.force_login(user)
    assert check(client, token="").status_code == 401
    client.force_login(staff_user("staff_member"))
    assert check(client, token="").status_code == 200


def test_the_token_is_compared_in_constant_time(client, monkeypatch):
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(health_view.hmac, "compare_digest", compare_digest)
    assert check(client, token="nope").status_code == 401
    assert check(client).status_code == 200
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_only_get_and_head_are_answered(client):
    assert check(client, method="head").status_code == 200
    response = check(client, method="post")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"


# --- Failure rates --------------------------------------------------------------------------

def test_attempts_that_will_be_retried_are_not_failures(client):
    for _ in range(5):
        finished("add", State.SUCCESSFUL)
        will_retry("add")
    assert check(client).status_code == 200

    gave_up("add")
    gave_up("add")  # 2 of 7 final outcomes failed: 29 % > 20 %
    response = check(client)
    assert response.status_code == 503
    [reason] = response.json()["reasons"]
    assert reason["kind"] == "failure_rate" and reason["task"] == "add"
    assert (reason["failed"], reason["finished"], reason["limit"]) == (2, 7, 0.2)
    assert reason["detail"] == ("2 of 7 runs that finished in the last 60 min failed (29%; "
                                "the limit is 20%).")


def test_rejected_and_never_delivered_runs_are_final_failures(client):
    for _ in range(4):
        finished("echo", State.SUCCESSFUL)
    finished("echo", State.REJECTED)
    assert check(client).status_code == 200  # 1 of 5: 20 %, not over the limit
    finished("echo", State.FAILED, attempts=0)  # its publish failed
    assert reasons(check(client)) == {("failure_rate", "echo")}


def test_a_task_with_too_few_finished_runs_is_not_judged(client, settings):
    gave_up("flaky")
    assert check(client).status_code == 200
    settings.TASKS_HEALTH_MIN_RUNS = 1
    assert reasons(check(client)) == {("failure_rate", "flaky")}


def test_only_runs_in_the_window_count(client, settings):
    for _ in range(5):
        gave_up("flaky", ago=timedelta(hours=2))
    assert check(client).status_code == 200
    settings.TASKS_HEALTH_WINDOW = 3 * 3600
    assert reasons(check(client)) == {("failure_rate", "flaky")}


def test_the_limit_is_the_routes_own(client, settings, fresh_registry):
    settings.TASKS_REGISTRY = "tests.health_registry"  # add: 0.5
    for task in ("add", "flaky"):
        for _ in range(5):
            finished(task, State.SUCCESSFUL)
        gave_up(task)
        gave_up(task)
    assert reasons(check(client)) == {("failure_rate", "flaky")}
    settings.TASKS_HEALTH_FAILURE_RATE = 0.5
    assert check(client).status_code == 200


@pytest.mark.django61  # @task(health_...=...) is Django 6.1's
def test_task_options_set_limits_and_the_route_wins(client, settings, fresh_registry):
    settings.TASKS_REGISTRY = "tests.health_task_options"
    for _ in range(2):
        finished("tolerant", State.SUCCESSFUL)
    for _ in range(8):
        gave_up("tolerant")  # 80 %, under its 90 %
    finished("tolerant", State.READY, ago=timedelta(minutes=20))  # under its 30 min
    finished("overridden", State.READY, ago=timedelta(minutes=2))  # over the route's 60 s
    assert reasons(check(client)) == {("ready_too_long", "overridden")}


# --- Stuck runs, schedules ------------------------------------------------------------------

def test_stuck_runs_are_reasons_naming_the_task_and_kind(client):
    dead = make_run("flaky", State.RUNNING)
    TaskExecution.objects.filter(pk=dead.pk).update(
        last_attempted_at=timezone.now() - timedelta(minutes=6))
    finished("echo", State.READY, ago=timedelta(minutes=25))
    finished("echo", State.READY, ago=timedelta(minutes=15))
    response = check(client)
    assert response.status_code == 503
    body = response.json()
    assert reasons(response) == {("stuck_running", "flaky"), ("ready_too_long", "echo")}
    waiting = next(r for r in body["reasons"] if r["kind"] == "ready_too_long")
    assert waiting["count"] == 2 and waiting["limit_seconds"] == 600
    assert 25 * 60 <= waiting["oldest_age_seconds"] < 26 * 60
    assert body["stuck"] == {"total": 3, "running": 1, "unconfirmed": 0, "waiting": 2}


def noon():
    """Today at 12:00 UTC: long after the test registry's 03:00 (Europe/London) job."""
    return timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)


def test_a_missed_schedule_is_a_reason_once_the_job_has_ever_fired(client):
    with time_machine.travel(noon(), tick=False):
        assert check(client).status_code == 200  # never fired: a new site
        finished("nightly_cleanup", State.SUCCESSFUL, ago=timedelta(days=2),
                 trigger=Trigger.SCHEDULE)
        response = check(client)
    assert response.status_code == 503
    [reason] = response.json()["reasons"]
    assert (reason["kind"], reason["task"], reason["state"]) == (
        "schedule", "nightly_cleanup", "overdue now")


def test_a_registry_that_cannot_be_loaded_is_a_reason(client, settings, fresh_registry):
    settings.TASKS_REGISTRY = "tests.no_such_registry"
    response = check(client)
    assert response.status_code == 503
    assert reasons(response) == {("registry", "")}


def test_nothing_about_payloads_is_in_the_answer(client):
    secret = "alice@example.com"
    for _ in range(5):
        gave_up("echo", kwargs={"email": secret}, return_value=secret,
                errors=[{"exception_class_path": "ValueError", "traceback": secret}],
                status_detail=f"bad {secret}")
    finished("echo", State.READY, ago=timedelta(hours=1), args=[secret])
    response = check(client)
    assert response.status_code == 503 and len(response.json()["reasons"]) == 2
    assert secret not in response.content.decode()


def test_a_database_that_cannot_be_read_is_unhealthy(client, monkeypatch):
    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(health_view, "check_health", down)
    response = check(client)
    assert response.status_code == 503
    assert reasons(response) == {("database", "")}
    assert "refused" not in response.content.decode()


def test_an_invalid_threshold_setting_is_unhealthy_with_its_reason(client, settings):
    settings.TASKS_HEALTH_FAILURE_RATE = "lots"
    response = check(client)
    assert response.status_code == 503
    assert reasons(response) == {("configuration", "")}
    assert "TASKS_HEALTH_FAILURE_RATE" in response.json()["reasons"][0]["detail"]


# --- Cost -------------------------------------------------------------------------------------

def test_the_endpoint_makes_four_queries_and_five_on_a_new_site(client):
    with time_machine.travel(noon(), tick=False):
        with CaptureQueriesContext(connection) as new_site:
            assert check(client).status_code == 200
        # Failure rates, stuck runs, scheduled runs, "has the job ever fired", last health.
        assert len(new_site.captured_queries) == 5

        for task in ("add", "echo", "flaky", "explode"):
            for status in State.values:
                finished(task, status)
        finished("nightly_cleanup", State.SUCCESSFUL, ago=timedelta(hours=9),
                 trigger=Trigger.SCHEDULE)  # today's 03:00 London fired
        with CaptureQueriesContext(connection) as busy:
            assert check(client).status_code == 200
        assert len(busy.captured_queries) == 4


# --- Changes ----------------------------------------------------------------------------------

@pytest.fixture
def announced():
    calls = []

    def receiver(sender, **kwargs):
        calls.append(kwargs)

    health_changed.connect(receiver)
    yield calls
    health_changed.disconnect(receiver)


def test_a_change_is_announced_once_by_signal_error_log_and_mail(client, settings, announced,
                                                                  caplog, mailoutbox):
    settings.TASKS_HEALTH_MAIL_ADMINS = True
    settings.ADMINS = ["ops@example.com"]
    caplog.set_level(logging.ERROR, logger="gyrinx_tasks")
    finished("echo", State.READY, ago=timedelta(minutes=20))
    for _ in range(3):
        assert check(client).status_code == 503
    assert len(announced) == 1
    assert announced[0]["healthy"] is False and announced[0]["previous_healthy"] is True
    assert [r["task"] for r in announced[0]["reasons"]] == ["echo"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # One record per change, from gyrinx_tasks; none per 503 from django.request (which would
    # also mail ADMINS through Django's default logging on every check).
    assert [r.name for r in errors] == ["gyrinx_tasks"]
    assert errors[0].getMessage().startswith("Task health changed: unhealthy (1 reason).")
    assert "ready_too_long echo" in errors[0].getMessage()
    assert [m.subject for m in mailoutbox] == ["[Django] Task health: unhealthy (1 reasons)"]

    # Another reason joins: a change. Its numbers growing older are not.
    dead = make_run("flaky", State.RUNNING)
    TaskExecution.objects.filter(pk=dead.pk).update(
        last_attempted_at=timezone.now() - timedelta(minutes=6))
    check(client)
    check(client)
    assert len(announced) == 2
    assert announced[1]["previous_reasons"] == ["ready_too_long:echo"]

    # All settled: healthy again, announced once.
    TaskExecution.objects.filter(status__in=[State.READY, State.RUNNING]).update(
        status=State.SUCCESSFUL)
    assert check(client).status_code == 200
    assert check(client).status_code == 200
    assert len(announced) == 3 and announced[2]["healthy"] is True
    assert len(mailoutbox) == 3 and mailoutbox[2].subject.endswith("healthy again")
    state = HealthState.objects.get()
    assert (state.version, state.healthy, state.reasons) == (3, True, [])


def test_mail_is_sent_only_when_asked_for(client, announced, mailoutbox, settings):
    settings.ADMINS = ["ops@example.com"]
    finished("echo", State.READY, ago=timedelta(minutes=20))
    check(client)
    assert len(announced) == 1 and mailoutbox == []


def test_only_the_process_that_wins_a_change_announces_it(announced):
    finished("echo", State.READY, ago=timedelta(minutes=20))
    report = health_report()
    stale = last_known_health()  # this process read the row before...
    assert record_health(report) is True  # ...another process recorded the change
    assert record_health(report, last=stale) is False  # so this one loses and says nothing
    assert len(announced) == 1

    # From an existing row too: the version moves on, the stale writer loses.
    TaskExecution.objects.filter(status=State.READY).update(status=State.SUCCESSFUL)
    healthy = health_report()
    stale = last_known_health()
    assert record_health(healthy) is True
    assert record_health(healthy, last=stale) is False
    assert len(announced) == 2 and HealthState.objects.get().version == 2


def test_a_failing_receiver_or_mail_does_not_break_the_check(client, settings, caplog,
                                                             monkeypatch):
    settings.TASKS_HEALTH_MAIL_ADMINS = True
    settings.ADMINS = ["ops@example.com"]

    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    def no_mail(*args, **kwargs):
        raise ConnectionRefusedError("no SMTP server")

    monkeypatch.setattr("gyrinx_tasks.health_alerts.mail_admins", no_mail)
    health_changed.connect(broken)
    try:
        finished("echo", State.READY, ago=timedelta(minutes=20))
        assert check(client).status_code == 503
    finally:
        health_changed.disconnect(broken)
    logged = [r.getMessage() for r in caplog.records]
    assert any("health_changed receiver" in m for m in logged)
    assert any("Could not mail ADMINS" in m for m in logged)


# --- The command ------------------------------------------------------------------------------

def test_the_command_exits_zero_when_healthy(capsys):
    call_command("tasks_health")
    assert capsys.readouterr().out.startswith("Healthy: no failing tasks")


def test_the_command_prints_the_reasons_and_exits_one_when_unhealthy(capsys, announced):
    finished("echo", State.READY, ago=timedelta(minutes=20))
    with pytest.raises(CommandError) as raised:
        call_command("tasks_health")
    assert raised.value.returncode == 1
    assert str(raised.value) == "Unhealthy: 1 reason."
    assert capsys.readouterr().out.startswith("ready_too_long echo: 1 run ready too long")
    assert len(announced) == 1  # it notices changes as the endpoint does

    with pytest.raises(CommandError):
        call_command("tasks_health", "--json")
    body = json.loads(capsys.readouterr().out)
    assert body["healthy"] is False and body["reasons"][0]["task"] == "echo"


def test_check_health_is_what_both_answer(client):
    finished("echo", State.READY, ago=timedelta(minutes=20))
    assert check(client).json()["reasons"] == [
        r.as_dict() for r in check_health().reasons]


# --- System checks (docs/checks.md) -----------------------------------------------------------

def ids():
    messages = checks.run_checks(databases=[])
    return sorted(m.id for m in messages if (m.id or "").startswith("gyrinx_tasks."))


def only(message_id):
    messages = [m for m in checks.run_checks(databases=[]) if m.id == message_id]
    assert messages and all(m.hint for m in messages)
    return messages


@pytest.mark.parametrize(("name", "bad", "good", "message_id"), [
    ("TASKS_HEALTH_FAILURE_RATE", "1.5", "0.3", "gyrinx_tasks.E040"),
    ("TASKS_HEALTH_FAILURE_RATE", True, 0, "gyrinx_tasks.E040"),
    ("TASKS_HEALTH_FAILURE_RATE", "nan", "1", "gyrinx_tasks.E040"),
    ("TASKS_HEALTH_WINDOW", 0, "7200", "gyrinx_tasks.E041"),
    ("TASKS_HEALTH_MIN_RUNS", "a few", 1, "gyrinx_tasks.E042"),
    ("TASKS_HEALTH_MAX_READY_AGE", -60, 60, "gyrinx_tasks.E043"),
])
def test_e040_to_e043_health_settings(settings, name, bad, good, message_id):
    setattr(settings, name, bad)
    assert ids() == [message_id]
    [message] = only(message_id)
    assert name in message.msg and name in message.hint
    setattr(settings, name, good)
    assert ids() == []


def test_e044_and_e045_route_thresholds(settings, fresh_registry):
    settings.TASKS_REGISTRY = "tests.check_registries.bad_health_thresholds"
    assert ids() == ["gyrinx_tasks.E044"] * 3 + ["gyrinx_tasks.E045"] * 2
    assert {m.obj for m in only("gyrinx_tasks.E044")} == {
        "tests.tasks.add", "tests.tasks.echo", "tests.tasks.explode"}
    assert {m.obj for m in only("gyrinx_tasks.E045")} == {"tests.tasks.add",
                                                          "tests.tasks.echo"}
    assert all("TASKS_HEALTH_MAX_READY_AGE" in m.hint for m in only("gyrinx_tasks.E045"))


@pytest.mark.django61
def test_e044_and_e045_task_options(settings, fresh_registry):
    settings.TASKS_REGISTRY = "tests.check_registries.bad_health_task_options"
    assert ids() == ["gyrinx_tasks.E044", "gyrinx_tasks.E045"]
    [rate] = only("gyrinx_tasks.E044")
    assert rate.msg == "@task(health_failure_rate=-0.1) is not a share from 0 to 1."
    assert rate.obj == "tests.check_registries.bad_health_task_options.badly_tuned"


def test_e046_token_not_a_string(settings):
    settings.TASKS_HEALTH_TOKEN = 12345
    assert ids() == ["gyrinx_tasks.E046"]


def test_w040_short_token(settings):
    settings.TASKS_HEALTH_TOKEN = "short"
    assert ids() == ["gyrinx_tasks.W040"]
    [message] = only("gyrinx_tasks.W040")
    assert "5 characters" in message.msg and "token_urlsafe" in message.hint
    settings.TASKS_HEALTH_TOKEN = ""
    assert ids() == []


def test_w041_mail_admins_without_admins(settings):
    settings.TASKS_HEALTH_MAIL_ADMINS = True
    settings.ADMINS = []
    assert ids() == ["gyrinx_tasks.W041"]
    settings.ADMINS = ["ops@example.com"]
    assert ids() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN output is PostgreSQL's")
def test_every_query_of_the_endpoint_can_use_an_index_on_postgresql(client):
    """With sequential scans priced out, no query the endpoint makes reads a whole table."""
    with time_machine.travel(noon(), tick=False):
        for i in range(30):
            finished("add", State.SUCCESSFUL, ago=timedelta(minutes=i * 7))
        gave_up("flaky")
        finished("echo", State.READY, ago=timedelta(minutes=30))
        finished("nightly_cleanup", State.SUCCESSFUL, ago=timedelta(days=3),
                 trigger=Trigger.SCHEDULE)
        with CaptureQueriesContext(connection) as captured:
            assert check(client).status_code == 503
    queries = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert len(queries) == 5  # the job has no run in its window: "has it ever fired" too
    for sql in queries:
        plan = "\n".join(postgresql_plan(sql))
        assert "Seq Scan" not in plan, plan
