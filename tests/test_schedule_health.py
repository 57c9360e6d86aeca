"""Schedule health (gyrinx_tasks/scheduling/health.py): expected fire times against scheduled runs.

Every test freezes the clock (time-machine) at the moment it judges; the dates inside a
frozen clock are chosen for their daylight-saving changes, not compared against today.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from gyrinx_tasks import TaskRoute
from gyrinx_tasks.models import State, TaskExecution, Trigger
from gyrinx_tasks.scheduling.health import (
    EARLY,
    HEALTH_WINDOW,
    Health,
    health_report,
    schedule_health,
)
from tests import scheduling_tasks

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

LONDON = "Europe/London"
# Europe/London in 2026: clocks go forward at 01:00 UTC on 29 March (01:00 GMT becomes
# 02:00 BST) and back at 01:00 UTC on 25 October (02:00 BST becomes 01:00 GMT).
SPRING_FORWARD = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
FALL_BACK = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
SUMMER = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
TOLERANCE = timedelta(seconds=300)  # the default TASKS_SCHEDULE_TOLERANCE


def route(schedule, zone=LONDON, func=scheduling_tasks.nightly_report, **options):
    return TaskRoute(func, schedule=schedule, schedule_timezone=zone, **options)


def ran(job, at, status=State.SUCCESSFUL, trigger=Trigger.SCHEDULE):
    return TaskExecution.objects.create(task_name=job.name, task_path=job.path,
                                        task_id=job.scheduled_task_id, trigger=trigger,
                                        status=status, created_at=at)


def health_of(job, now, time_machine):
    time_machine.move_to(now, tick=False)
    [result] = schedule_health(routes=[job])
    return result


# --- on time and late -----------------------------------------------------------------------------

def test_a_run_within_the_tolerance_is_on_time(time_machine):
    job = route("0 3 * * *")  # 03:00 BST = 02:00 UTC in June
    ran(job, datetime(2026, 6, 10, 2, 0, 40, tzinfo=UTC))
    result = health_of(job, SUMMER, time_machine)
    assert result.health is Health.ON_TIME and result.healthy
    [firing] = result.firings
    assert firing.due_at == datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    assert firing.delay == timedelta(seconds=40)
    assert result.describe() == "The run due at Wed 10 Jun 03:00 BST arrived within 5 min."


def test_a_run_past_the_tolerance_is_late(time_machine):
    job = route("0 3 * * *")
    ran(job, datetime(2026, 6, 10, 2, 10, tzinfo=UTC))
    result = health_of(job, SUMMER, time_machine)
    assert result.health is Health.LATE and not result.healthy
    assert result.describe() == ("The run due at Wed 10 Jun 03:00 BST arrived 10 min late "
                                 "(tolerance 5 min).")


def test_the_tolerance_is_a_setting_and_a_route_may_override_it(time_machine):
    job = route("0 3 * * *")
    ran(job, datetime(2026, 6, 10, 2, 10, tzinfo=UTC))
    with override_settings(TASKS_SCHEDULE_TOLERANCE=900):
        assert health_of(job, SUMMER, time_machine).health is Health.ON_TIME
    patient = route("0 3 * * *", schedule_tolerance=660)
    assert health_of(patient, SUMMER, time_machine).health is Health.ON_TIME
    strict = route("0 3 * * *", schedule_tolerance=60)
    with override_settings(TASKS_SCHEDULE_TOLERANCE=900):  # the route's own wins
        assert health_of(strict, SUMMER, time_machine).health is Health.LATE


def test_a_run_recorded_a_moment_before_its_fire_time_belongs_to_it(time_machine):
    # Cloud Scheduler's clock and ours differ slightly.
    job = route("0 3 * * *")
    ran(job, datetime(2026, 6, 10, 2, 0, tzinfo=UTC) - EARLY + timedelta(seconds=1))
    assert health_of(job, SUMMER, time_machine).health is Health.ON_TIME


# --- failed, missed, overdue now ------------------------------------------------------------------

@pytest.mark.parametrize("status", [State.FAILED, State.REJECTED])
def test_a_run_that_failed_makes_the_job_failed(time_machine, status):
    job = route("0 3 * * *")
    run = ran(job, datetime(2026, 6, 10, 2, 0, 5, tzinfo=UTC), status=status)
    result = health_of(job, SUMMER, time_machine)
    assert result.health is Health.FAILED
    assert result.firings[0].run_id == run.pk
    assert result.describe() == f"The run due at Wed 10 Jun 03:00 BST {status.label.lower()}."


def test_a_run_failing_an_attempt_that_will_be_retried_fails_the_job_and_says_so(time_machine):
    # Stored FAILED, not given up, delivered: Pub/Sub redelivers it (shown "Failing, will
    # retry"). The job is not healthy while its firing fails, and the words say it will retry.
    job = route("0 3 * * *")
    run = TaskExecution.objects.create(
        task_name=job.name, task_path=job.path, task_id=job.scheduled_task_id,
        trigger=Trigger.SCHEDULE, status=State.FAILED, attempts=1, message_id="m-1",
        gave_up=False, created_at=datetime(2026, 6, 10, 2, 0, 5, tzinfo=UTC))
    result = health_of(job, SUMMER, time_machine)
    assert result.health is Health.FAILED
    assert result.firings[0].run_id == run.pk
    assert result.firings[0].run_status == "Failing, will retry"
    assert result.describe() == ("The run due at Wed 10 Jun 03:00 BST is failing; Pub/Sub will "
                                 "retry it.")


def test_skipped_running_and_queued_runs_fired_so_they_are_not_failures(time_machine):
    job = route("0 * * * *", zone="UTC")
    now = datetime(2026, 6, 10, 3, 30, tzinfo=UTC)
    for hour in range(24):  # every hour of the window ran on time ...
        due = now.replace(minute=0) - timedelta(hours=hour)
        status = [State.SKIPPED, State.RUNNING, State.READY][hour % 3]
        ran(job, due + timedelta(seconds=20), status=status)
    result = health_of(job, now, time_machine)
    assert result.health is Health.ON_TIME
    assert len(result.firings) == 24  # 04:00 yesterday .. 03:00 today


def test_a_fire_time_with_no_run_before_the_next_one_is_missed(time_machine):
    job = route("0 * * * *", zone="UTC")
    now = datetime(2026, 6, 10, 12, 2, tzinfo=UTC)
    for hour in range(25):  # 12:00 yesterday (within the window and tolerance) to 12:00 today
        due = now.replace(minute=0) - timedelta(hours=hour)
        if hour != 5:  # 07:00 never ran
            ran(job, due + timedelta(seconds=3))
    result = health_of(job, now, time_machine)
    assert result.health is Health.MISSED
    assert result.worst.due_at == datetime(2026, 6, 10, 7, 0, tzinfo=UTC)
    assert result.counts == {Health.ON_TIME: 24, Health.MISSED: 1}
    assert result.describe() == ("No run arrived for Wed 10 Jun 07:00 UTC before the next fire "
                                 "time; 1 of 25 missed.")


def test_only_runs_of_the_schedule_trigger_count(time_machine):
    job = route("0 3 * * *")
    due = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    for trigger in (Trigger.RUN_NOW, Trigger.ENQUEUE, Trigger.RETRY):
        ran(job, due + timedelta(seconds=10), trigger=trigger)
    assert health_of(job, SUMMER, time_machine).health is Health.OVERDUE


def test_the_latest_fire_time_without_a_run_is_overdue_only_past_the_tolerance(time_machine):
    job = route("0 3 * * *")
    ran(job, datetime(2026, 6, 9, 2, 0, 5, tzinfo=UTC))  # yesterday's ran
    due = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    waiting = health_of(job, due + timedelta(seconds=299), time_machine)
    assert waiting.health is Health.ON_TIME  # a run may still come
    assert waiting.firings[0].health is None
    overdue = health_of(job, due + timedelta(minutes=25), time_machine)
    assert overdue.health is Health.OVERDUE and not overdue.healthy
    assert overdue.describe() == ("Due at Wed 10 Jun 03:00 BST; no run has arrived 25 min "
                                  "later (tolerance 5 min).")
    ran(job, due + timedelta(minutes=26))
    assert health_of(job, due + timedelta(minutes=27), time_machine).health is Health.LATE


def test_a_waiting_fire_time_leaves_the_earlier_missed_one_showing(time_machine):
    job = route("0 3 * * *")
    ran(job, datetime(2026, 6, 8, 2, 0, 5, tzinfo=UTC))
    # 9 June never ran; 10 June is due a minute ago. The window reaches back 24 hours.
    result = health_of(job, datetime(2026, 6, 10, 2, 1, tzinfo=UTC), time_machine)
    assert [f.health for f in result.firings] == [None, Health.MISSED]
    assert result.health is Health.MISSED


def test_overdue_now_outranks_failed_which_outranks_missed_and_late(time_machine):
    job = route("*/10 * * * *", zone="UTC")
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    ran(job, now - timedelta(minutes=50, seconds=-3))  # 11:10 on time; 11:20 missed
    ran(job, now - timedelta(minutes=30) + timedelta(seconds=400))  # 11:30 late
    assert health_of(job, now, time_machine).health is Health.MISSED  # 12:00 still due
    ran(job, now - timedelta(minutes=20) + timedelta(seconds=2), status=State.FAILED)
    assert health_of(job, now, time_machine).health is Health.FAILED
    assert health_of(job, now + timedelta(minutes=6), time_machine).health is Health.OVERDUE


# --- never due, and the bounded window ------------------------------------------------------------

def test_a_job_that_has_never_come_due_is_not_missed(time_machine):
    leap_day = route("0 9 29 2 *")  # last came due on 29 February 2024, over a year before
    result = health_of(leap_day, SUMMER, time_machine)
    assert result.health is Health.NOT_YET_DUE and result.healthy
    assert result.firings == ()
    assert "has not come due" in result.describe()


def test_a_job_firing_less_often_than_the_window_is_judged_on_its_latest_fire_time(
        time_machine):
    weekly = route("0 6 * * 1")  # Mondays 06:00; 10 June 2026 is a Wednesday
    result = health_of(weekly, SUMMER, time_machine)
    assert [f.due_at for f in result.firings] == [datetime(2026, 6, 8, 5, 0, tzinfo=UTC)]
    assert result.health is Health.OVERDUE


def test_the_window_is_bounded_for_a_job_that_fires_every_minute(time_machine):
    job = route("* * * * *", zone="UTC")
    result = health_of(job, SUMMER, time_machine)
    assert len(result.firings) == 60  # the newest MAX_FIRINGS, not a day of minutes
    assert result.firings[-1].health is Health.MISSED
    assert result.firings[0].due_at - result.firings[-1].due_at < HEALTH_WINDOW


# --- daylight saving (Europe/London) --------------------------------------------------------------

def test_spring_forward_a_skipped_local_time_is_due_when_the_clocks_change(time_machine):
    # 01:30 does not exist on 29 March: the job is due at 02:00 BST (01:00 UTC), as cron fires it.
    job = route("30 1 * * *")
    ran(job, datetime(2026, 3, 28, 1, 30, 10, tzinfo=UTC))  # 01:30 GMT the day before
    waiting = health_of(job, SPRING_FORWARD + timedelta(minutes=4), time_machine)
    assert waiting.firings[0].due_at == SPRING_FORWARD
    assert waiting.health is Health.ON_TIME
    assert health_of(job, SPRING_FORWARD + timedelta(minutes=6),
                     time_machine).health is Health.OVERDUE
    ran(job, SPRING_FORWARD + timedelta(seconds=8))
    result = health_of(job, SPRING_FORWARD + timedelta(minutes=6), time_machine)
    assert result.health is Health.ON_TIME
    assert result.describe() == "2 of 2 fire times ran within 5 min."


def test_spring_forward_an_hourly_job_is_not_expected_in_the_missing_hour(time_machine):
    job = route("0 * * * *")
    now = SPRING_FORWARD + timedelta(hours=12, minutes=3)
    at = now.replace(minute=0)
    while at > now - HEALTH_WINDOW - TOLERANCE:  # one run every real hour
        ran(job, at + timedelta(seconds=5))
        at -= timedelta(hours=1)
    result = health_of(job, now, time_machine)
    assert result.health is Health.ON_TIME
    assert result.counts == {Health.ON_TIME: 25}  # 12:00 GMT on the 28th to 13:00 BST


def test_fall_back_a_repeated_local_time_is_due_once(time_machine):
    # 01:30 happens twice on 25 October: cron fires the first (BST, 00:30 UTC) only.
    job = route("30 1 * * *")
    ran(job, FALL_BACK - timedelta(minutes=30) + timedelta(seconds=5))
    # An hour after the second 01:30 (01:30 GMT): were it expected, it would be overdue.
    result = health_of(job, FALL_BACK + timedelta(hours=1, minutes=30), time_machine)
    assert [f.due_at for f in result.firings] == [FALL_BACK - timedelta(minutes=30)]
    assert result.health is Health.ON_TIME


def test_fall_back_an_hourly_job_is_due_in_both_passes_of_the_repeated_hour(time_machine):
    job = route("0 * * * *")
    now = FALL_BACK + timedelta(hours=3, minutes=2)
    at = now.replace(minute=0)
    while at > now - HEALTH_WINDOW - TOLERANCE:
        if at != FALL_BACK:  # 01:00 GMT, the second 01:00, did not run
            ran(job, at + timedelta(seconds=5))
        at -= timedelta(hours=1)
    result = health_of(job, now, time_machine)
    assert result.health is Health.MISSED
    assert result.worst.due_at == FALL_BACK
    assert "Sun 25 Oct 01:00 GMT" in result.describe()
    assert len(result.firings) == 25  # the window: 24 real hours and the tolerance


# --- all jobs at once -----------------------------------------------------------------------------

def test_all_jobs_are_judged_with_one_query(time_machine, django_assert_num_queries):
    jobs = [route("0 3 * * *"), route("*/5 * * * *", func=scheduling_tasks.hourly_ping),
            route("0 9 29 2 *", func=scheduling_tasks.published_nightly),
            TaskRoute(scheduling_tasks.on_demand)]  # not scheduled: left out
    ran(jobs[1], SUMMER - timedelta(minutes=1))  # 11:55 ran; 11:50 and before did not
    time_machine.move_to(SUMMER, tick=False)
    with django_assert_num_queries(1):
        results = schedule_health(routes=jobs)
    assert [r.route.name for r in results] == ["nightly_report", "hourly_ping",
                                               "published_nightly"]
    assert [r.health for r in results] == [Health.OVERDUE, Health.MISSED, Health.NOT_YET_DUE]


def test_a_schedule_that_cannot_be_read_is_unhealthy_with_the_reason(time_machine):
    result = health_of(route("0 3 * * *", zone="Mars/Olympus"), SUMMER, time_machine)
    assert not result.healthy
    assert "is not an IANA time zone" in result.describe()


@override_settings(TASKS_REGISTRY="tests.scheduling_tasks")
def test_health_report_is_what_a_health_endpoint_answers(time_machine):
    from gyrinx_tasks.registry import get_route

    time_machine.move_to(SUMMER, tick=False)
    report = health_report()
    assert report["healthy"] is False
    names = {job["task"]: job for job in report["jobs"]}
    assert set(names) == {"hourly_ping", "nightly_report", "published_nightly"}
    hourly = get_route("hourly_ping")
    for hours in range(25):
        ran(hourly, SUMMER - timedelta(hours=hours) + timedelta(seconds=1))
    time_machine.move_to(SUMMER + timedelta(minutes=2), tick=False)
    hourly_report = {job["task"]: job for job in health_report()["jobs"]}["hourly_ping"]
    # 12:00 yesterday to 12:00 today: the window is 24 hours and the 5 minute tolerance.
    assert hourly_report == {
        "task": "hourly_ping", "state": "on time", "healthy": True,
        "detail": "25 of 25 fire times ran within 5 min.", "tolerance_seconds": 300,
        "last_due_at": "2026-06-10T12:00:00+00:00", "counts": {"on time": 25}}
    assert report["unhealthy"] == sum(not job["healthy"] for job in report["jobs"])


def test_a_flood_of_runs_is_cut_to_the_newest(time_machine, monkeypatch):
    from gyrinx_tasks.scheduling import health as module

    monkeypatch.setattr(module, "MAX_RUNS_PER_JOB", 3)
    job = route("0 * * * *", zone="UTC")
    now = datetime(2026, 6, 10, 12, 2, tzinfo=UTC)
    for hour in range(6):
        ran(job, now.replace(minute=0) - timedelta(hours=hour, seconds=-2))
    result = health_of(job, now, time_machine)
    # The newest three fire times keep their runs; older ones are read as having none.
    assert [f.health for f in result.firings[:4]] == [Health.ON_TIME] * 3 + [Health.MISSED]


@override_settings(TASKS_SCHEDULE_TOLERANCE="soon")
def test_an_unusable_tolerance_setting_is_shown_per_job_instead_of_a_crash(time_machine):
    result = health_of(route("0 3 * * *"), SUMMER, time_machine)
    assert not result.healthy
    assert result.describe() == ("TASKS_SCHEDULE_TOLERANCE is 'soon'; set it to a positive "
                                 "number of seconds such as 300.")
