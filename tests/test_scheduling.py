"""Scheduled routes: payload, fire times across daylight-saving changes, firing, the loop."""

import json
import logging
import re
import time
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.tasks import task_backends
from django.test import override_settings

from gyrinx_tasks import TaskRoute, clients
from gyrinx_tasks.management.commands.tasks_scheduler import Command
from gyrinx_tasks.models import KillSwitch, State, TaskExecution, Trigger
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.scheduling.cron import describe_schedule, next_fire_time, recent_fire_times
from gyrinx_tasks.scheduling.firing import (
    LocalScheduler,
    due_routes,
    fire_scheduled,
    scheduled_message,
)
from tests import scheduling_tasks
from tests.helpers import FakePublisher, use_publisher

pytestmark = pytest.mark.clock

LONDON, NEW_YORK = ZoneInfo("Europe/London"), ZoneInfo("America/New_York")
SCHEDULING_REGISTRY = override_settings(TASKS_REGISTRY="tests.scheduling_tasks")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def route(schedule: str, zone: str = "UTC", func=scheduling_tasks.hourly_ping) -> TaskRoute:
    return TaskRoute(func, schedule=schedule, schedule_timezone=zone)


def fire_times(r: TaskRoute, start: datetime, end: datetime) -> list[datetime]:
    times, at = [], start
    while (at := next_fire_time(r, at)) <= end:
        times.append(at)
    return times


class FakeClock:
    """A clock that moves only when the loop sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += timedelta(seconds=seconds)


# The payload


def test_scheduled_message_is_the_seeds_scheduled_payload():
    nightly = get_route("nightly_cleanup")
    message = scheduled_message(nightly)
    assert message == {
        "task_id": "scheduled-test--gyrinx-scheduler--tests-tasks-nightly_cleanup",
        "task_name": "nightly_cleanup",
        "args": [],
        "kwargs": {},
    }
    assert "enqueued_at" not in message
    assert json.loads(json.dumps(message)) == message


def test_describe_schedule_reads_like_a_sentence():
    assert describe_schedule(get_route("nightly_cleanup")) == "At 03:00 AM"
    assert describe_schedule(route("0 * * * *")) == "Every hour"


# Fire times


@pytest.mark.parametrize(
    "schedule, zone, start, expected",
    [
        # Europe/London springs forward at 01:00 GMT on 2026-03-29: 01:30 does not exist, so the
        # run happens at the first valid instant after it, 02:00 BST, the moment clocks change.
        (
            "30 1 * * *",
            "Europe/London",
            utc(2026, 3, 28, 12),
            [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)],
        ),
        # ...and falls back at 02:00 BST on 2026-10-25: 01:30 happens twice, the run happens once.
        (
            "30 1 * * *",
            "Europe/London",
            utc(2026, 10, 24, 12),
            [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        # America/New_York skips 02:00-03:00 on 2026-03-08 and repeats 01:00-02:00 on 2026-11-01.
        (
            "30 2 * * *",
            "America/New_York",
            utc(2026, 3, 7, 12),
            [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            utc(2026, 10, 31, 12),
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        # A time that exists is untouched, on either side of the change.
        (
            "0 3 * * *",
            "Europe/London",
            utc(2026, 3, 28, 12),
            [utc(2026, 3, 29, 2, 0), utc(2026, 3, 30, 2, 0)],
        ),
    ],
)
def test_daily_schedule_fires_once_per_local_day_across_dst(schedule, zone, start, expected):
    assert fire_times(route(schedule, zone), start, start + timedelta(hours=48)) == expected


@pytest.mark.parametrize(
    "zone, start",
    [
        ("Europe/London", utc(2026, 3, 28, 12)),
        ("Europe/London", utc(2026, 10, 24, 12)),
        ("America/New_York", utc(2026, 3, 7, 17)),
        ("America/New_York", utc(2026, 10, 31, 16)),
    ],
)
def test_hourly_schedule_fires_every_real_hour_across_dst(zone, start):
    times = fire_times(route("0 * * * *", zone), start, start + timedelta(hours=48))
    assert len(times) == 48
    assert {b - a for a, b in zip(times, times[1:], strict=False)} == {timedelta(hours=1)}


def test_hourly_schedule_is_not_pulled_forward_into_the_missing_hour():
    # 01:30 London does not exist on 2026-03-29. A schedule that follows real time skips it
    # rather than also firing at 02:00 BST, half an hour after the previous run.
    times = fire_times(
        route("30 * * * *", "Europe/London"), utc(2026, 3, 29, 0), utc(2026, 3, 29, 3)
    )
    assert times == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)]


def test_repeated_local_hour_fires_in_both_passes_for_sub_hourly_schedules():
    times = fire_times(
        route("*/30 * * * *", "Europe/London"), utc(2026, 10, 24, 23, 59), utc(2026, 10, 25, 2, 0)
    )
    assert times == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2, 0),
    ]


@pytest.mark.parametrize("schedule", ["30 1 * * *", "0 2 * * *", "0 * * * *", "*/20 * * * *",
                                      "*/15 1 * * *", "30 0-3 * * 0"])
@pytest.mark.parametrize("zone, start", [("Europe/London", utc(2026, 3, 28)),
                                         ("Europe/London", utc(2026, 10, 24)),
                                         ("America/New_York", utc(2026, 3, 7, 12)),
                                         ("Australia/Lord_Howe", utc(2026, 4, 4))])
def test_recent_fire_times_walks_back_over_the_instants_next_fire_time_steps_through(
        schedule, zone, start):
    # Schedule health walks backwards; it must see the same daylight-saving rules.
    end = start + timedelta(hours=48)
    forwards = fire_times(route(schedule, zone), start, end)
    assert recent_fire_times(route(schedule, zone), end, since=start, limit=1000) == \
        forwards[::-1]
    for limit in (1, 2, 5):
        assert recent_fire_times(route(schedule, zone), end, since=start,
                                 limit=limit) == forwards[::-1][:limit]


def test_recent_fire_times_needs_aware_datetimes():
    with pytest.raises(ValueError, match="aware datetimes"):
        recent_fire_times(route("0 * * * *"), datetime(2026, 1, 1, 5), since=utc(2026, 1, 1),
                          limit=3)


def test_next_fire_time_is_strictly_after_and_needs_an_aware_datetime():
    hourly = route("0 * * * *")
    assert next_fire_time(hourly, utc(2026, 1, 1, 5)) == utc(2026, 1, 1, 6)
    with pytest.raises(ValueError, match="aware datetime"):
        next_fire_time(hourly, datetime(2026, 1, 1, 5))


@pytest.mark.parametrize(
    "schedule, zone, message",
    [
        ("every day", "UTC", "not a five-field cron expression"),
        ("0 0 3 * * *", "UTC", "not a five-field cron expression"),
        ("@daily", "UTC", "not a five-field cron expression"),
        ("0 3 * * *", "Mars/Olympus", "not an IANA time zone"),
        ("0 0 31 2 *", "UTC", "never matches a real date"),
    ],
)
def test_unusable_schedules_say_how_to_fix_them(schedule, zone, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        next_fire_time(route(schedule, zone), utc(2026, 1, 1))
    with pytest.raises(ImproperlyConfigured, match=message):
        LocalScheduler([route(schedule, zone)])


def test_due_routes_fires_each_route_once_per_window_with_its_latest_due_time():
    hourly, daily = route("0 * * * *"), route("0 3 * * *", func=scheduling_tasks.nightly_report)
    unscheduled = TaskRoute(scheduling_tasks.on_demand)
    routes = [hourly, daily, unscheduled]
    assert due_routes(utc(2026, 1, 1, 0, 59), utc(2026, 1, 1, 0, 0), routes) == []
    # Window edges: the start is exclusive, the end inclusive.
    assert due_routes(utc(2026, 1, 1, 1), utc(2026, 1, 1, 0, 59), routes) == [
        (hourly, utc(2026, 1, 1, 1))
    ]
    assert due_routes(utc(2026, 1, 1, 1, 1), utc(2026, 1, 1, 1), routes) == []
    # A machine that slept through several runs catches up with one.
    assert due_routes(utc(2026, 1, 1, 4, 10), utc(2026, 1, 1, 0, 30), routes) == [
        (hourly, utc(2026, 1, 1, 4)),
        (daily, utc(2026, 1, 1, 3)),
    ]


# The loop, with an injected clock


def simulate(routes, start, hours, interval=15):
    clock, fired = FakeClock(start), []
    scheduler = LocalScheduler(
        routes,
        interval=interval,
        clock=clock,
        sleep=clock.sleep,
        fire=lambda r: f"fired-{len(fired)}",
        report=lambda f: fired.append((f, clock.now)),
    )
    count = scheduler.run(max_iterations=int(hours * 3600 / interval))
    assert count == len(fired)
    return fired


@pytest.mark.parametrize(
    "zone, local_start",
    [
        ("Europe/London", datetime(2026, 3, 29)),
        ("Europe/London", datetime(2026, 10, 25)),
        ("America/New_York", datetime(2026, 3, 8)),
        ("America/New_York", datetime(2026, 11, 1)),
    ],
)
def test_loop_over_48_hours_across_a_dst_change(zone, local_start):
    tz = ZoneInfo(zone)
    start = local_start.replace(tzinfo=tz).astimezone(UTC)
    daily_0130 = route("30 1 * * *", zone, scheduling_tasks.nightly_report)
    daily_0230 = route("30 2 * * *", zone, scheduling_tasks.published_nightly)
    hourly = route("0 * * * *", zone)
    began = time.monotonic()
    fired = simulate([daily_0130, daily_0230, hourly], start, 48)
    assert time.monotonic() - began < 10, "the simulated loop must not actually wait"

    by_name: dict[str, list] = {}
    for record, clock_at in fired:
        assert record.error is None and record.ident.startswith("fired-")
        # Fired in the first check after it fell due, never before.
        assert timedelta(0) <= clock_at - record.due_at < timedelta(seconds=15)
        by_name.setdefault(record.route.name, []).append(record.due_at)
    first_day = local_start.date()
    days = [first_day, first_day + timedelta(days=1)]
    for name in ("nightly_report", "published_nightly"):
        local_days = [at.astimezone(tz).date() for at in by_name[name]]
        assert local_days == days, f"{name} must fire exactly once on each local day"
    hours = by_name["hourly_ping"]
    assert len(hours) == 48
    assert {b - a for a, b in zip(hours, hours[1:], strict=False)} == {timedelta(hours=1)}


def test_loop_starts_from_now_and_fires_no_backlog():
    # Started ten seconds after 03:00 London: the 03:00 run was missed and stays missed.
    clock = FakeClock(datetime(2026, 6, 1, 3, 0, 10, tzinfo=LONDON).astimezone(UTC))
    fired = []
    scheduler = LocalScheduler(
        [route("0 3 * * *", "Europe/London")],
        clock=clock,
        sleep=clock.sleep,
        fire=lambda r: "x",
        report=fired.append,
    )
    assert scheduler.run(max_iterations=4) == 0
    assert fired == [] and clock.slept == 60


def test_loop_keeps_running_when_a_fire_fails(caplog):
    failing = route("0 * * * *", func=scheduling_tasks.nightly_report)
    working = route("0 * * * *")
    calls = []

    def fire(r):
        calls.append(r.name)
        if r is failing:
            raise RuntimeError("topic missing")
        return "ok"

    clock, reports = FakeClock(utc(2026, 1, 1, 0, 59)), []
    scheduler = LocalScheduler(
        [failing, working],
        interval=60,
        clock=clock,
        sleep=clock.sleep,
        fire=fire,
        report=reports.append,
    )
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        assert scheduler.run(max_iterations=62) == 4  # 01:00 and 02:00, both routes
    assert calls == ["nightly_report", "hourly_ping"] * 2
    failures = [r for r in reports if r.error is not None]
    assert [str(r.error) for r in failures] == ["topic missing"] * 2
    assert "FAILED: RuntimeError: topic missing" in failures[0].describe()
    assert "Firing scheduled task nightly_report failed" in caplog.text


def test_loop_does_not_fire_twice_when_the_clock_is_set_back():
    times = iter(
        [
            utc(2026, 1, 1, 0, 59, 50),
            utc(2026, 1, 1, 1, 0, 5),
            utc(2026, 1, 1, 0, 59, 55),
            utc(2026, 1, 1, 1, 0, 10),
        ]
    )
    fired = []
    scheduler = LocalScheduler(
        [route("0 * * * *")],
        clock=lambda: next(times),
        sleep=lambda s: None,
        fire=lambda r: "x",
        report=fired.append,
    )
    assert scheduler.run(max_iterations=3) == 1


# fire_scheduled through real backends


@pytest.mark.django_db
@pytest.mark.parametrize("trigger", [Trigger.SCHEDULE, Trigger.RUN_NOW])
def test_fire_scheduled_through_immediate_backend_records_the_run(trigger):
    nightly = route("30 1 * * *", "Europe/London", scheduling_tasks.nightly_report)
    scheduling_tasks.RUNS.clear()
    kwargs = {} if trigger == Trigger.SCHEDULE else {"trigger": trigger}
    result_id = fire_scheduled(nightly, **kwargs)
    assert scheduling_tasks.RUNS == ["nightly_report"]
    execution = TaskExecution.objects.get(result_id=result_id)
    assert execution.trigger == trigger
    assert execution.task_id == nightly.scheduled_task_id
    assert execution.task_id.startswith("scheduled-")
    assert execution.status == State.SUCCESSFUL
    assert execution.return_value == {"rows": 3}
    assert execution.backend == "immediate"
    assert TaskExecution.objects.count() == 1


@pytest.mark.django_db
def test_fire_scheduled_through_immediate_backend_honours_the_kill_switch():
    nightly = route("30 1 * * *", "Europe/London", scheduling_tasks.nightly_report)
    KillSwitch.objects.create(task_name="nightly_report", enabled=False)
    scheduling_tasks.RUNS.clear()
    execution = TaskExecution.objects.get(result_id=fire_scheduled(nightly))
    assert scheduling_tasks.RUNS == []
    assert execution.status == State.SKIPPED
    assert execution.trigger == Trigger.SCHEDULE
    assert "off in the database" in execution.status_detail


@pytest.mark.emulator
def test_fire_scheduled_publishes_to_the_emulator(pubsub_emulator):
    backend = task_backends["default"]
    backend.__dict__.pop("publisher", None)  # build a client that sees the emulator
    nightly = route("0 3 * * *", "Europe/London", scheduling_tasks.published_nightly)
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    topic = backend.topic_path(nightly.topic_name)
    subscription = pubsub_emulator.subscription_path("test-scheduling-pull")
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        message_id = fire_scheduled(nightly, trigger=Trigger.RUN_NOW)
        received = []
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
            received = list(response.received_messages)
        assert len(received) == 1, "the emulator did not deliver the scheduled message"
        message = received[0].message
        subscriber.acknowledge(subscription=subscription, ack_ids=[received[0].ack_id])
        assert message.message_id == message_id
        assert json.loads(message.data) == {
            "task_id": nightly.scheduled_task_id,
            "task_name": "published_nightly",
            "args": [],
            "kwargs": {},
        }
        assert dict(message.attributes) == {"trigger": "run_now"}
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic)
        subscriber.close()
        publisher.stop()
        backend.__dict__.pop("publisher", None)


# The command


def run_command(monkeypatch, start: datetime, *args: str) -> str:
    clock = FakeClock(start)
    monkeypatch.setattr(Command, "clock", staticmethod(clock))
    monkeypatch.setattr(Command, "sleep", staticmethod(clock.sleep))
    out = StringIO()
    call_command("tasks_scheduler", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
@SCHEDULING_REGISTRY
def test_command_fires_the_registry_over_a_fall_back_night(monkeypatch, fake_publisher):
    scheduling_tasks.RUNS.clear()
    # 00:59 BST on 2026-10-25 to 03:19 GMT: one minute checks for 200 minutes.
    out = run_command(
        monkeypatch, utc(2026, 10, 24, 23, 59), "--interval", "60", "--max-iterations", "200"
    )
    assert "Checking 3 scheduled task(s) every 60 s" in out
    assert "nightly_report: At 01:30 AM (Europe/London); next 2026-10-25 01:30 BST" in out
    assert "2026-10-25 01:00 GMT (Europe/London)  hourly_ping  fired:" in out
    assert "2026-10-25 03:00 GMT (Europe/London)  published_nightly  fired: msg-1" in out
    assert "Stopped after 200 checks; 6 fired." in out
    assert scheduling_tasks.RUNS == ["hourly_ping", "nightly_report"] + ["hourly_ping"] * 3
    runs = TaskExecution.objects.all()
    assert {(r.task_name, r.trigger) for r in runs} == {
        ("hourly_ping", Trigger.SCHEDULE),
        ("nightly_report", Trigger.SCHEDULE),
    }
    assert [(topic.rsplit("/", 1)[1], attrs) for topic, _, attrs in fake_publisher.published] == [
        ("test--gyrinx.tasks--tests.scheduling_tasks.published_nightly", {"trigger": "schedule"})
    ]


@pytest.mark.django_db
@SCHEDULING_REGISTRY
def test_command_reports_a_failed_fire_and_carries_on(monkeypatch):
    use_publisher(FakePublisher(error=RuntimeError("no such topic")))
    try:
        out = run_command(
            monkeypatch, utc(2026, 1, 1, 2, 59), "--interval", "60", "--max-iterations", "62"
        )
    finally:
        task_backends["default"].__dict__.pop("publisher", None)
    assert "2026-01-01 03:00 GMT (Europe/London)  published_nightly  FAILED:" in out
    assert "no such topic" in out
    assert "2026-01-01 04:00 GMT (Europe/London)  hourly_ping  fired:" in out


@SCHEDULING_REGISTRY
def test_command_stops_cleanly_on_ctrl_c(monkeypatch):
    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(Command, "clock", staticmethod(lambda: utc(2026, 1, 1)))
    monkeypatch.setattr(Command, "sleep", staticmethod(interrupted))
    out = StringIO()
    call_command("tasks_scheduler", stdout=out)
    assert out.getvalue().rstrip().endswith("Stopped.")


@pytest.mark.django_db
@SCHEDULING_REGISTRY
def test_command_run_now_fires_one_task_immediately():
    scheduling_tasks.RUNS.clear()
    out = StringIO()
    call_command("tasks_scheduler", "--run-now", "nightly_report", stdout=out)
    execution = TaskExecution.objects.get()
    assert f"Fired nightly_report now: {execution.result_id}" in out.getvalue()
    assert execution.trigger == Trigger.RUN_NOW
    assert scheduling_tasks.RUNS == ["nightly_report"]


@SCHEDULING_REGISTRY
@pytest.mark.parametrize(
    "name, message",
    [
        (
            "nope",
            "No route in TASKS_REGISTRY is named 'nope'. Scheduled tasks: hourly_ping, "
            "nightly_report, published_nightly.",
        ),
        ("on_demand", "'on_demand' has no schedule; call .enqueue() to run it."),
    ],
)
def test_command_run_now_names_the_scheduled_tasks_when_it_cannot(name, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("tasks_scheduler", "--run-now", name, stdout=StringIO())


def test_the_days_the_dst_tests_use_really_are_dst_change_days():
    for zone, day in (
        (LONDON, date(2026, 3, 29)),
        (LONDON, date(2026, 10, 25)),
        (NEW_YORK, date(2026, 3, 8)),
        (NEW_YORK, date(2026, 11, 1)),
    ):
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=zone)
        next_midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
        assert next_midnight.astimezone(UTC) - midnight.astimezone(UTC) != timedelta(hours=24)
