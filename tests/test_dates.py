"""The admin's one date-time format (gyrinx_tasks/dates.py) and where pages use it."""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.template import Context, Template
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.dates import format_when, zones_agree
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.registry import get_route
from gyrinx_tasks.scheduling.cron import next_fire_time
from tests.helpers import make_run

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def test_format_with_and_without_seconds_and_zone():
    at = datetime(2030, 1, 5, 16, 19, 7, tzinfo=UTC)  # a value formatted, not a clock read
    with timezone.override(UTC):
        assert format_when(at) == "5 Jan 2030, 16:19 UTC"
        assert format_when(at, seconds=True) == "5 Jan 2030, 16:19:07 UTC"
        assert format_when(at, zone=False) == "5 Jan 2030, 16:19"
    with timezone.override(NEW_YORK):  # the viewer's zone, named
        assert format_when(at) == "5 Jan 2030, 11:19 EST"
    assert format_when(at, tz=LONDON) == "5 Jan 2030, 16:19 GMT"
    # Timeline and error entries hold ISO strings; anything else is shown as it is.
    assert format_when("2030-01-05T16:19:07+00:00", seconds=True, tz=UTC) \
        == "5 Jan 2030, 16:19:07 UTC"
    assert format_when("soon") == "soon"
    assert format_when(None) == format_when("") == "–"


def test_template_filter():
    at = datetime(2030, 7, 1, 8, 5, 9, tzinfo=UTC)
    template = Template('{% load gyrinx_dates %}{{ at|when }} | {{ at|when:"seconds" }} | '
                        '{{ at|when:"seconds,nozone" }}')
    with timezone.override(UTC):
        assert template.render(Context({"at": at})) == \
            "1 Jul 2030, 08:05 UTC | 1 Jul 2030, 08:05:09 UTC | 1 Jul 2030, 08:05:09"


def test_zones_agree_on_the_clock_time():
    winter, summer = (datetime(2030, 1, 5, tzinfo=UTC), datetime(2030, 7, 5, tzinfo=UTC))
    assert zones_agree(winter, LONDON, UTC)  # GMT is UTC's clock
    assert not zones_agree(summer, LONDON, UTC)  # BST is an hour ahead
    assert not zones_agree(winter, LONDON, NEW_YORK)


@pytest.mark.django_db
@override_settings(TIME_ZONE="Europe/London")
def test_scheduled_jobs_print_a_next_run_once_when_the_zones_agree(admin_client):
    route = get_route("nightly_cleanup")  # scheduled in Europe/London, like the viewer here
    body = admin_client.get(reverse("admin:gyrinx_tasks_scheduledjob_changelist")).content
    runs = re.findall(r'<li><time datetime="[^"]+">([^<]+)</time>([^<]*)(<span[^>]*>[^<]*)?',
                      body.decode())
    assert len(runs) == 5
    at = timezone.now()
    for text, _between, viewer in runs:
        at = next_fire_time(route, at)
        assert text == format_when(at, tz=LONDON)
        assert not viewer  # no second time after the dot: it would read the same


@pytest.mark.django_db
@override_settings(TIME_ZONE="UTC")
def test_run_page_and_list_show_times_to_the_second(admin_client):
    now = timezone.now().replace(microsecond=0)
    run = make_run("add", State.SUCCESSFUL, started_at=now - timedelta(seconds=3),
                   finished_at=now)
    TaskExecution.objects.filter(pk=run.pk).update(created_at=now - timedelta(seconds=5))
    page = admin_client.get(
        reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])).content.decode()
    for label, value in (("Created at", now - timedelta(seconds=5)),
                         ("Started at", now - timedelta(seconds=3)), ("Finished at", now)):
        block = page[page.index(f">{label}:<"):][:600]
        assert format_when(value, seconds=True) in block, label
    runs = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_changelist")).content
    day, time = format_when(now - timedelta(seconds=5), seconds=True, zone=False).split(", ")
    assert f'{day},</span> <span class="gyrinx-nowrap">{time}</span>' in runs.decode()
    # Every row is in the same zone, so the list says it once, not on each row.
    assert runs.decode().count("Times are in UTC.") == 1
    assert f"{time} UTC" not in runs.decode()


@pytest.mark.django_db
def test_overview_prints_the_window_zone_once(admin_client):
    body = admin_client.get(reverse("admin:gyrinx_tasks_overview_changelist"),
                            {"window": "1h"}).content.decode()
    window = re.search(r"(\d+ \w+ \d{4}, \d\d:\d\d) – (\d+ \w+ \d{4}, \d\d:\d\d UTC)", body)
    assert window, "no window range in the page"
