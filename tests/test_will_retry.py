"""Failing, will retry apart from failed (issue 16, behaviour 12, the dashboard's part).

A failed attempt that Pub/Sub will deliver again is READY to Django; staff see it as "Failing,
will retry", and FAILED means final (gave up, or not retried). One definition in models.py
(WILL_RETRY, FAILED_FOR_GOOD, SHOWN_STATUS) serves the overview's counts and failure rate, the
run list's status filter and badge, and the CSV export, so they agree.
"""

import csv
import io
import itertools
import re
from html import unescape

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import stats
from gyrinx_tasks.export import ExportFilterError, filter_runs, stream_csv
from gyrinx_tasks.models import (
    FAILED_FOR_GOOD,
    SHOWN_STATUS,
    WILL_RETRY,
    ShownStatus,
    State,
    TaskExecution,
)
from tests.helpers import envelope, make_run, postgresql_plan, push

pytestmark = [pytest.mark.django_db, pytest.mark.clock, pytest.mark.usefixtures("no_oidc")]

OVERVIEW = "admin:gyrinx_tasks_overview_changelist"
RUNS = "admin:gyrinx_tasks_taskexecution_changelist"


def failing(task_name="explode", **fields):
    """A FAILED run Pub/Sub will deliver again: delivered (message id), attempted, not given
    up."""
    return make_run(task_name, State.FAILED, message_id=f"m-{TaskExecution.objects.count()}",
                    attempts=1, **fields)


def given_up(task_name="explode", **fields):
    return make_run(task_name, State.FAILED, message_id=f"g-{TaskExecution.objects.count()}",
                    attempts=3, gave_up=True, **fields)


def deliver(client, key, message_id):
    """One delivery of a flaky run (fails on attempt 1, succeeds on attempt 2)."""
    message = {"task_id": f"t-{key}", "task_name": "flaky", "args": [], "kwargs": {"key": key},
               "enqueued_at": timezone.now().isoformat()}
    return push(client, envelope(message, message_id=message_id))


# --- One definition ---------------------------------------------------------------------

def test_the_expressions_agree_with_the_model_and_split_every_run_once():
    """Every mix of the fields will_retry reads: the database and Python say the same, and
    each run is in exactly one shown status."""
    runs = [make_run("add", status) for status in State.values if status != State.FAILED]
    for gave_up, attempts, message_id in itertools.product(
            (False, True), (0, 1), (None, "", "m-x")):
        runs.append(make_run("add", State.FAILED, gave_up=gave_up, attempts=attempts,
                             message_id=message_id and f"{message_id}{len(runs)}"))

    shown = dict(TaskExecution.objects.annotate(shown=SHOWN_STATUS).values_list("pk", "shown"))
    retrying = set(TaskExecution.objects.filter(WILL_RETRY).values_list("pk", flat=True))
    final = set(TaskExecution.objects.filter(FAILED_FOR_GOOD).values_list("pk", flat=True))
    for run in runs:
        assert shown[run.pk] == run.shown_status, run
        assert (run.pk in retrying) is run.will_retry, run
        assert (run.pk in final) is (run.status == State.FAILED and not run.will_retry), run
    # Only a delivered, attempted, not given-up FAILED run will retry.
    assert len(retrying) == 1 and len(final) == 11
    for value in ShownStatus.values:
        found = set(TaskExecution.objects.shown_status(value).values_list("pk", flat=True))
        assert found == {run.pk for run in runs if run.shown_status == value}, value
    assert sum(TaskExecution.objects.shown_status(v).count() for v in ShownStatus.values) \
        == len(runs)


# --- The overview ----------------------------------------------------------------------

def cell(html, task, column):
    row = re.search(rf'<tr class="gyrinx-task-row" data-task="{task}">(.*?)</tr>', html, re.S)
    found = re.search(rf'data-count="{column}">(.*?)</td>', row.group(1), re.S)
    return found.group(1)


def text(html):
    return re.sub(r"<[^>]+>", " ", html).split()[0]


def test_a_failed_attempt_that_succeeds_on_redelivery_never_counts_as_failed(client,
                                                                            admin_client):
    """Through the push endpoint: after attempt 1 the run is failing (will retry), not failed,
    and the failure rate has nothing finished; after attempt 2 it is successful and the rate
    is 0%, not 50%."""
    assert deliver(client, "k", "m-41").status_code == 500  # attempt 1 fails on purpose
    run = TaskExecution.objects.get()
    assert (run.status, run.shown_status) == (State.FAILED, ShownStatus.WILL_RETRY)

    page = admin_client.get(reverse(OVERVIEW), {"window": "1h"}).content.decode()
    assert [text(cell(page, "flaky", c)) for c in ("WILL_RETRY", "FAILED", "failure-rate")] \
        == ["1", "0", "–"]
    found = stats.overview("1h")
    flaky = next(task for task in found.tasks if task.name == "flaky")
    assert flaky.counts == {ShownStatus.WILL_RETRY: 1, State.FAILED: 0}
    assert flaky.failed_per_minute == [0.0] * len(flaky.failed_per_minute)  # no red bar
    assert "1</strong> failing, will retry" in page and "0</strong> failed" in page

    assert deliver(client, "k", "m-41").status_code == 200  # attempt 2 succeeds
    page = admin_client.get(reverse(OVERVIEW), {"window": "1h"}).content.decode()
    assert [text(cell(page, "flaky", c))
            for c in ("SUCCESSFUL", "WILL_RETRY", "FAILED", "failure-rate")] \
        == ["1", "0", "0", "0%"]


def test_counts_and_rate_split_failing_from_failed_and_link_to_each_list(admin_client):
    failing_run = failing()
    final = given_up()
    never_delivered = make_run("explode", State.FAILED)  # a publish refused: final
    make_run("explode", State.SUCCESSFUL)
    old = failing()
    TaskExecution.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timezone.timedelta(days=3))

    page = admin_client.get(reverse(OVERVIEW), {"window": "24h"}).content.decode()
    assert [text(cell(page, "explode", c))
            for c in ("total", "SUCCESSFUL", "WILL_RETRY", "FAILED", "failure-rate")] \
        == ["4", "1", "1", "2", "66.7%"]  # 2 failed ÷ (1 successful + 2 failed)
    header = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    assert header.index("Successful") < header.index("Failing, will retry") \
        < header.index("Failed<")

    def listed(column):
        link = unescape(re.search(r'href="([^"]+)"', cell(page, "explode", column)).group(1))
        assert link.startswith(reverse(RUNS) + "?") and f"status={column}" in link
        runs = admin_client.get(link).content.decode()
        return {run.result_id[:8] for run in (failing_run, final, never_delivered, old)
                if f">{run.result_id[:8]}<" in runs}

    assert listed("WILL_RETRY") == {failing_run.result_id[:8]}  # the window holds, too
    assert listed("FAILED") == {final.result_id[:8], never_delivered.result_id[:8]}

    # The totals above the table, and the recent failures, tell the two apart too.
    totals = re.search(r'<ul class="gyrinx-totals">(.*?)</ul>', page, re.S).group(1)
    assert re.search(r'data-total="WILL_RETRY"><a href="[^"]*status=WILL_RETRY[^"]*"',
                     totals)
    assert "<strong>1</strong> failing, will retry" in totals
    assert "<strong>2</strong> failed" in totals
    panel = page.split('class="module gyrinx-failures"')[1].split("gyrinx-running")[0]
    assert panel.count('<tr class="gyrinx-failure">') == 3
    assert panel.count(">will retry<") == 1 and panel.count(">gave up<") == 1


def test_the_overview_asks_nothing_more_when_the_window_has_no_failures():
    make_run("add", State.SUCCESSFUL)
    with CaptureQueriesContext(connection) as none_failed:
        stats.overview("24h")
    failing()
    with CaptureQueriesContext(connection) as one_failed:
        stats.overview("24h")
    assert len(one_failed.captured_queries) == len(none_failed.captured_queries) + 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN output is PostgreSQL's")
def test_the_failing_count_reads_an_index_on_postgresql():
    # A site's shape: a few failing runs among many that succeeded. (On forty rows, half of
    # them failed, PostgreSQL rightly reads them all through the message id index instead.)
    for _ in range(20):
        failing()
    TaskExecution.objects.bulk_create([
        TaskExecution(task_name="add", task_path="tests.tasks.add", status=State.SUCCESSFUL,
                      message_id=f"ok-{i}", attempts=1) for i in range(500)])
    with CaptureQueriesContext(connection) as captured:
        stats.overview("24h")
    query = next(q["sql"] for q in captured.captured_queries if "gave_up" in q["sql"])
    plan = "\n".join(postgresql_plan(query))
    assert "Seq Scan" not in plan, plan
    # One of the package's indexes finds the failed runs by their status.
    assert re.search(r"Scan (?:on|using) gyrinx_exec_\w+[^\n]*\n\s+Index Cond: [^\n]*FAILED",
                     plan), plan


# --- The run list ----------------------------------------------------------------------

def test_the_run_list_filters_and_badges_failing_apart_from_failed(admin_client):
    failing_run, final = failing(), given_up()
    everything = admin_client.get(reverse(RUNS)).content.decode()
    assert "?status=WILL_RETRY" in everything  # the filter's choice
    assert ">Failing, will retry</a>" in everything
    badges = re.findall(r'<span class="gyrinx-status gyrinx-status-([a-z_]+)">([^<]+)</span>',
                        everything)
    assert sorted(badges) == [("failed", "Failed"), ("will_retry", "Failing, will retry")]

    only_failing = admin_client.get(reverse(RUNS), {"status": "WILL_RETRY"}).content.decode()
    only_failed = admin_client.get(reverse(RUNS), {"status": "FAILED"}).content.decode()
    assert failing_run.result_id[:8] in only_failing and final.result_id[:8] not in only_failing
    assert final.result_id[:8] in only_failed and failing_run.result_id[:8] not in only_failed
    unknown = admin_client.get(reverse(RUNS), {"status": "BROKEN"})
    assert unknown.status_code == 200 and failing_run.result_id[:8] not in unknown.text


def test_a_retry_failing_with_a_redelivery_to_come_reads_so_under_its_original(admin_client):
    original = given_up()
    retry = failing(retry_of=original, trigger="retry")
    listed = admin_client.get(reverse(RUNS)).content.decode()
    under = re.search(r'<div class="gyrinx-retried">(.*?)</div>', listed, re.S).group(1)
    assert retry.result_id[:8] in under
    assert 'gyrinx-status-will_retry">Failing, will retry<' in under
    # And on the original's page, in its retry panel.
    page = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                                    args=[original.pk])).content.decode()
    assert 'gyrinx-status-will_retry">Failing, will retry<' in page


# --- The export ------------------------------------------------------------------------

def test_the_export_writes_and_filters_the_status_staff_see(admin_client):
    failing_run, final, ok = failing(), given_up(), make_run("add", State.SUCCESSFUL)

    rows = {row["result_id"]: row["status"] for row in
            csv.DictReader(io.StringIO("".join(stream_csv(TaskExecution.objects.all()))))}
    assert rows == {failing_run.result_id: "WILL_RETRY", final.result_id: "FAILED",
                    ok.result_id: "SUCCESSFUL"}

    assert list(filter_runs(statuses=["will_retry"])) == [failing_run]
    assert list(filter_runs(statuses=["FAILED"])) == [final]
    with pytest.raises(ExportFilterError, match="WILL_RETRY, FAILED"):
        filter_runs(statuses=["FAILING"])

    out = io.StringIO()
    call_command("tasks_export", "--status", "WILL_RETRY", stdout=out)
    assert [row["result_id"] for row in csv.DictReader(io.StringIO(out.getvalue()))] == [
        failing_run.result_id]

    # The admin's streaming export follows the run list's filter.
    response = admin_client.post(
        reverse("admin:gyrinx_tasks_taskexecution_export_stream") + "?status=WILL_RETRY")
    body = b"".join(response.streaming_content).decode()
    assert [row["result_id"] for row in csv.DictReader(io.StringIO(body))] == [
        failing_run.result_id]


# --- In a browser ----------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_failing_count_opens_the_failing_runs(admin_page, live_server):
    failing_run, final = failing(), given_up()
    make_run("explode", State.SUCCESSFUL)
    page = admin_page
    page.goto(f"{live_server.url}{reverse(OVERVIEW)}?window=1h")
    cells = page.locator('tr[data-task="explode"] td')
    assert cells.locator('xpath=self::*[@data-count="WILL_RETRY"]').inner_text() == "1"
    assert cells.locator('xpath=self::*[@data-count="FAILED"]').inner_text() == "1"
    assert cells.locator('xpath=self::*[@data-count="failure-rate"]').inner_text() == "50.0%"

    page.locator('tr[data-task="explode"] td[data-count="WILL_RETRY"] a').click()
    page.wait_for_url("**status=WILL_RETRY**")
    assert page.locator("#result_list tbody th a").all_inner_texts() == [
        failing_run.result_id[:8]]
    assert page.locator("#result_list .gyrinx-status").first.inner_text() \
        == "Failing, will retry"
    # The sidebar says which status the list shows.
    assert page.locator("#changelist-filter li.selected", has_text="Failing, will retry") \
        .count() == 1
    assert final.result_id[:8] not in page.locator("#result_list").inner_text()


def test_every_state_has_a_shown_status_so_a_new_state_is_never_unfilterable():
    # A state added to State (CANCELLED was) must be a choice of the status filter and the
    # export too: ShownStatus holds every State and adds WILL_RETRY, nothing else.
    assert set(ShownStatus.values) == set(State.values) | {ShownStatus.WILL_RETRY}
