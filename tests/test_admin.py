"""The admin pages for task runs (kill switches: tests/test_killswitches.py)."""

import html
import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.paginator import EmptyPage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.admin.pagination import EstimatedCountPaginator
from gyrinx_tasks.dates import format_when
from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import CHANGELIST, make_run, postgresql_plan, shown, staff_user

pytestmark = pytest.mark.django_db


def short(*runs):
    return [run.result_id[:8] for run in runs]


# --- Task execution changelist -------------------------------------------------------------

def test_changelist_loads_with_a_bounded_number_of_queries(
    admin_client, django_assert_max_num_queries
):
    for name in ("add", "echo", "flaky"):
        for status in (State.READY, State.FAILED, State.SUCCESSFUL, State.REJECTED):
            make_run(name, status, errors=[{"exception_class_path": "x.Y", "traceback": "t"}])
    for _ in range(30):
        make_run("add")
    url = reverse(CHANGELIST)

    # Session, user, one count, one page of rows, and one query for the page's error classes
    # and retries: nothing per row or per filter choice. PostgreSQL first reads the row
    # estimate, which is too small here to be used.
    bound = 6 if connection.vendor == "postgresql" else 5
    with django_assert_max_num_queries(bound) as captured:
        response = admin_client.get(url)

    assert response.status_code == 200
    assert len(shown(response)) == 42
    assert not any("DISTINCT" in q["sql"].upper() for q in captured.captured_queries)
    # The heavy JSON columns are not loaded for the list: the page's rows leave them out, and
    # the per-page query reads only the last error's class out of them, in the database.
    page_query, extras_query = (q["sql"] for q in captured.captured_queries[-2:])
    assert '"traceback"' not in page_query and '"errors"' not in page_query
    assert "exception_class_path" in extras_query
    assert not re.search(r'SELECT [^()]*"errors"[,\s]', extras_query)
    assert "date_hierarchy" not in response.content.decode()


def test_changelist_pages_newest_first(admin_client):
    runs = [make_run() for _ in range(55)]
    first = admin_client.get(reverse(CHANGELIST))
    second = admin_client.get(reverse(CHANGELIST), {"p": 2})
    assert shown(first) == short(*reversed(runs[5:]))
    assert shown(second) == short(*reversed(runs[:5]))


def test_filters_offer_fixed_states_triggers_and_registry_task_names(admin_client):
    make_run("add")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    for state in State.values:
        assert f"?status={state}" in page
    for trigger in Trigger.values:
        assert f"?trigger={trigger}" in page
    # Every registry task is offered, including those that have never run.
    for name in ("add", "echo", "explode", "flaky", "report_attempt", "nightly_cleanup"):
        assert f"?task_name={name}" in page


def test_filters_narrow_the_list(admin_client):
    failed_add = make_run("add", State.FAILED)
    ok_add = make_run("add", State.SUCCESSFUL)
    failed_echo = make_run("echo", State.FAILED, trigger=Trigger.RETRY)
    url = reverse(CHANGELIST)

    assert shown(admin_client.get(url, {"status": "FAILED"})) == short(failed_echo, failed_add)
    assert shown(admin_client.get(url, {"task_name": "add"})) == short(ok_add, failed_add)
    assert shown(admin_client.get(url, {"trigger": "retry"})) == short(failed_echo)
    both = admin_client.get(url, {"task_name": "add", "status": "SUCCESSFUL"})
    assert shown(both) == short(ok_add)
    # A name that has left the registry still filters; an unknown value shows nothing.
    gone = make_run("retired_task")
    assert shown(admin_client.get(url, {"task_name": "retired_task"})) == short(gone)
    assert shown(admin_client.get(url, {"status": "NOPE"})) == []


def test_search_matches_ids_exactly(admin_client):
    run = make_run("add", message_id="1234567890")
    scheduled = make_run("nightly_cleanup", task_id="scheduled-test--job")
    other = make_run("add")
    url = reverse(CHANGELIST)

    assert shown(admin_client.get(url, {"q": run.result_id})) == short(run)
    assert shown(admin_client.get(url, {"q": f"  {run.result_id} "})) == short(run)
    assert shown(admin_client.get(url, {"q": "1234567890"})) == short(run)
    assert shown(admin_client.get(url, {"q": "scheduled-test--job"})) == short(scheduled)
    assert shown(admin_client.get(url, {"q": run.result_id[:8]})) == []
    assert shown(admin_client.get(url, {"q": run.result_id.upper()})) == []
    assert other.result_id[:8] in shown(admin_client.get(url))


def error(path, attempt=1):
    return {"exception_class_path": path, "traceback": f"Traceback ...\n{path}: boom",
            "attempt": attempt, "at": "2026-01-01T00:00:00+00:00"}


def test_search_finds_runs_by_task_name_or_path_in_part_and_any_case(admin_client):
    flaky = make_run("flaky", State.FAILED)
    echo = make_run("echo")
    add = make_run("add")
    url = reverse(CHANGELIST)

    # Before: only exact ids were found, so these all showed nothing.
    assert shown(admin_client.get(url, {"q": "flaky"})) == short(flaky)
    assert shown(admin_client.get(url, {"q": "FLAK"})) == short(flaky)
    assert shown(admin_client.get(url, {"q": "tests.tasks.echo"})) == short(echo)
    # "a" is in "add", "flaky" and in every path ("tests.tasks..."): all of them.
    assert shown(admin_client.get(url, {"q": "tasks.a"})) == short(add)
    # A task that left the registry is found by its exact name.
    gone = make_run("retired_task")
    assert shown(admin_client.get(url, {"q": "retired_task"})) == short(gone)
    assert shown(admin_client.get(url, {"q": "retired"})) == []


def test_search_finds_runs_by_their_last_errors_class(admin_client):
    runtime = make_run("flaky", State.FAILED, errors=[error("builtins.ValueError"),
                                                      error("builtins.RuntimeError", 2)])
    earlier = make_run("flaky", State.FAILED, errors=[error("builtins.RuntimeError"),
                                                      error("builtins.KeyError", 2)])
    other_module = make_run("explode", State.FAILED,
                            errors=[error("myapp.errors.RuntimeError")])
    make_run("add", State.SUCCESSFUL)
    url = reverse(CHANGELIST)

    assert shown(admin_client.get(url, {"q": "RuntimeError"})) == short(other_module, runtime)
    assert shown(admin_client.get(url, {"q": "runtimeerror"})) == short(other_module, runtime)
    assert shown(admin_client.get(url, {"q": "builtins.RuntimeError"})) == short(runtime)
    assert shown(admin_client.get(url, {"q": "myapp.errors.RuntimeError"})) == short(
        other_module)
    assert shown(admin_client.get(url, {"q": "KeyError"})) == short(earlier)
    assert shown(admin_client.get(url, {"q": "ValueError"})) == []  # not the last error
    # Several words must all match: a task and a class.
    assert shown(admin_client.get(url, {"q": "flaky RuntimeError"})) == short(runtime)
    assert shown(admin_client.get(url, {"q": "explode KeyError"})) == []


def test_list_shows_the_last_errors_class(admin_client):
    make_run("flaky", State.FAILED, errors=[error("builtins.ValueError"),
                                           error("requests.exceptions.ConnectionError", 2)])
    make_run("add", State.SUCCESSFUL)

    page = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert re.search(r'<code class="gyrinx-error-class" '
                     r'title="requests.exceptions.ConnectionError">ConnectionError</code>', page)
    assert page.count("gyrinx-error-class") == 1
    assert "ValueError" not in page


def test_list_shows_which_runs_were_retried_and_by_what(admin_client):
    failed = make_run("flaky", State.FAILED)
    first = make_run("flaky", State.FAILED, trigger=Trigger.RETRY, retry_of=failed)
    second = make_run("flaky", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=failed)
    lonely = make_run("flaky", State.FAILED)

    response = admin_client.get(reverse(CHANGELIST))

    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r'class="field-short_result_id"><a [^>]*>([0-9a-f]{8})</a>.*?'
        r'<td class="field-status_badge">(.*?)</td>.*?<td class="field-trigger_cell">(.*?)</td>',
        response.content.decode(), re.S)}
    change = "/admin/gyrinx_tasks/taskexecution/{}/change/"
    # The original: under its state, its newest retry, linked, with that retry's state, and
    # a link to the other retries.
    status, trigger = rows[failed.result_id[:8]]
    assert (f'retried as <a href="{change.format(second.pk)}">{second.result_id[:8]}</a> '
            '<span class="gyrinx-status gyrinx-status-successful">Successful</span>') in status
    assert f'?retry_of={failed.pk}" title="All retries of this run">+1</a>' in status
    assert trigger == "Enqueued"
    # The retries say, under their trigger, what they retry; a run never retried shows only
    # its state.
    for retry in (first, second):
        status, trigger = rows[retry.result_id[:8]]
        assert "retried as" not in status
        assert trigger.startswith("Retry <span class=\"gyrinx-retry-of gyrinx-nowrap\">of <a")
        assert f'href="{change.format(failed.pk)}">{failed.result_id[:8]}</a>' in trigger
    assert rows[lonely.result_id[:8]][0] == (
        '<span class="gyrinx-status gyrinx-status-failed">Failed</span>')


def test_not_yet_recovered_filter(admin_client):
    recovered = make_run("flaky", State.FAILED)
    make_run("flaky", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=recovered)
    # Recovered through a retry of a retry; the failed retry in between is recovered too.
    deep = make_run("flaky", State.FAILED)
    middle = make_run("flaky", State.FAILED, trigger=Trigger.RETRY, retry_of=deep)
    make_run("flaky", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=middle)
    # A failed retry whose sibling succeeded is recovered as well.
    twice = make_run("echo", State.REJECTED)
    sibling = make_run("echo", State.FAILED, trigger=Trigger.RETRY, retry_of=twice)
    make_run("echo", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=twice)
    # Still broken: never retried, retried without success, retry still queued.
    never = make_run("add", State.FAILED)
    rejected = make_run("add", State.REJECTED)
    again = make_run("add", State.FAILED)
    failed_retry = make_run("add", State.FAILED, trigger=Trigger.RETRY, retry_of=again)
    waiting = make_run("add", State.FAILED)
    make_run("add", State.READY, trigger=Trigger.RETRY, retry_of=waiting)
    make_run("add", State.SKIPPED)
    url = reverse(CHANGELIST)

    pending = shown(admin_client.get(url, {"recovery": "pending"}))
    assert pending == short(waiting, failed_retry, again, rejected, never)
    assert sorted(shown(admin_client.get(url, {"recovery": "recovered"}))) == sorted(
        short(recovered, deep, middle, twice, sibling))
    page = admin_client.get(url).content.decode()
    assert "?recovery=pending" in page and "Not yet recovered" in page


def test_recovery_filter_counts_no_further_than_its_cap(admin_client, monkeypatch):
    from gyrinx_tasks.admin.executions import TaskExecutionAdmin

    monkeypatch.setattr(TaskExecutionAdmin, "recovery_count_cap", 3)
    for _ in range(5):
        make_run("flaky", State.FAILED)

    pending = admin_client.get(reverse(CHANGELIST), {"recovery": "pending"})
    failed = admin_client.get(reverse(CHANGELIST), {"status": "FAILED"})

    assert re.search(r">more than 3</span> task executions", pending.content.decode())
    assert len(shown(pending)) == 5  # the page itself is not cut
    assert re.search(r"\n5 task executions", failed.content.decode())  # other filters count on


def test_time_and_id_ranges_in_the_url_show_as_chips_that_remove_them(admin_client):
    now = timezone.now().replace(microsecond=0)
    old = make_run("add", created_at=now - timedelta(hours=30))
    recent = make_run("add", created_at=now - timedelta(hours=1))
    url = reverse(CHANGELIST)
    since = now - timedelta(hours=24)
    query = {"created_at__gte": since.isoformat(), "created_at__lt": now.isoformat(),
             "task_name": "add"}

    response = admin_client.get(url, query)

    assert shown(response) == short(recent)
    page = response.content.decode()
    local = format_when(since, seconds=True)  # the admin's one date-time format
    chip = re.search(r'<span class="gyrinx-chip"><span>(.*?)</span>\s*<a href="([^"]+)"', page)
    assert chip, page
    assert chip.group(1).startswith(f"Created from {local} until ")
    removed = admin_client.get(url + html.unescape(chip.group(2)))
    assert shown(removed) == short(recent, old)  # the task filter stays
    assert "gyrinx-chip" not in removed.content.decode()
    assert 'class="gyrinx-chips"' not in admin_client.get(url).content.decode()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN output is PostgreSQL's")
@pytest.mark.parametrize("query, index", [
    ({"q": "RuntimeError"}, "gyrinx_exec_error_class"),
    ({"q": "builtins.RuntimeError"}, "gyrinx_exec_error_class"),
    ({"q": "flaky"}, "gyrinx_exec_task"),
    ({"q": "0b5e2a3c-1f00-4c1e-9d7e-2a1b3c4d5e6f"}, "result_id"),
    # The retry lookups of every candidate go through the small index of successful retries.
    ({"recovery": "pending"}, "gyrinx_exec_recovered_by"),
    ({"recovery": "recovered"}, "gyrinx_exec_recovered_by"),
])
def test_search_queries_use_an_index_on_postgresql(admin_client, query, index):
    """With sequential scans priced out, the run list's search has an index for every kind
    of word, including the exception class, which lives inside the errors JSON; the recovery
    filters look retries up in the partial index of successful retries."""
    # What is searched for is rare among many runs, as an incident's error class is.
    TaskExecution.objects.bulk_create([
        TaskExecution(task_name="add", task_path="tests.tasks.add", status=State.FAILED,
                      errors=[error("builtins.KeyError")]) for _ in range(2000)])
    for _ in range(2):
        make_run("flaky", State.FAILED, errors=[error("builtins.RuntimeError")])
    TaskExecution.objects.bulk_create([
        TaskExecution(task_name="add", task_path="tests.tasks.add", status=State.SUCCESSFUL)
        for _ in range(2000)])
    analyze()
    admin_client.get(reverse(CHANGELIST))  # the session, once
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(reverse(CHANGELIST), query)
    # The count and the page (the page's extras are looked up by primary key).
    searched = [q["sql"] for q in captured.captured_queries
                if "gyrinx_tasks_taskexecution" in q["sql"] and "WHERE" in q["sql"]
                and '"gyrinx_tasks_taskexecution"."id" IN (' not in q["sql"]]
    assert len(searched) == 2, searched
    assert searched, captured.captured_queries
    for sql in searched:
        plan = "\n".join(postgresql_plan(sql))
        assert "Seq Scan" not in plan, plan
        assert index in plan, plan


# --- Counting ------------------------------------------------------------------------------

def analyze():
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(TaskExecution._meta.db_table)}")


def test_paginator_counts_exactly_unless_unfiltered_on_postgresql(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)
    for _ in range(20):
        make_run("add")
    if connection.vendor == "postgresql":
        analyze()
    for _ in range(5):
        make_run("echo")
    everything = TaskExecution.objects.order_by("-created_at")
    filtered = everything.filter(task_name="echo")

    if connection.vendor == "postgresql":
        # The estimate is what the last ANALYZE saw: the five later rows are not in it.
        assert EstimatedCountPaginator(everything, 10).count == 20
        assert EstimatedCountPaginator(everything, 10).estimated_count() == 20
    else:
        assert EstimatedCountPaginator(everything, 10).count == 25
        assert EstimatedCountPaginator(everything, 10).estimated_count() is None
    assert EstimatedCountPaginator(filtered, 10).count == 5
    assert EstimatedCountPaginator(filtered, 10).estimated_count() is None
    assert EstimatedCountPaginator(everything[:3], 10).estimated_count() is None


def test_filtered_counts_stop_at_the_cap(admin_client, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 3)
    for _ in range(5):
        make_run("echo")
    make_run("add")
    filtered = TaskExecution.objects.filter(task_name="echo").order_by("-created_at")

    paginator = EstimatedCountPaginator(filtered, 2)
    assert paginator.count == 4  # cap + 1: enough to know there are more
    assert paginator.is_capped and paginator.is_approximate
    assert len(paginator.page(3).object_list) == 1  # the real 5th row, past the counted end
    assert list(paginator.page(9).object_list) == []  # far past: empty, not an error
    assert EstimatedCountPaginator(
        TaskExecution.objects.filter(task_name="add").order_by("pk"), 2).count == 1

    response = admin_client.get(reverse(CHANGELIST), {"task_name": "echo"})
    assert re.search(r">more than 3</span> task executions", response.content.decode())


def test_approximate_totals_offer_no_last_page_link():
    paginator = EstimatedCountPaginator(TaskExecution.objects.order_by("pk"), 10)
    paginator.is_estimate = True
    paginator.__dict__["count"] = 1_000  # as if estimated
    assert list(paginator.get_elided_page_range(50)) == [
        1, 2, paginator.ELLIPSIS, 47, 48, 49, 50, 51, 52, 53, paginator.ELLIPSIS]
    assert list(paginator.get_elided_page_range(1)) == [1, 2, 3, 4, paginator.ELLIPSIS]


def test_paginator_counts_small_tables_exactly():
    for _ in range(3):
        make_run("add")
    if connection.vendor == "postgresql":
        analyze()
    assert EstimatedCountPaginator(TaskExecution.objects.order_by("pk"), 10).count == 3


def test_paginator_counts_a_never_analysed_table_exactly(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)
    for _ in range(4):
        make_run("add")
    paginator = EstimatedCountPaginator(TaskExecution.objects.order_by("pk"), 10)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # the state of a table no ANALYZE has seen
            cursor.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = to_regclass(%s)",
                           [TaskExecution._meta.db_table])
    assert paginator.count == 4


def test_unfiltered_changelist_skips_count_star_on_postgresql(admin_client, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)
    for _ in range(12):
        make_run("add")
    if connection.vendor == "postgresql":
        analyze()
    admin_client.get(reverse(CHANGELIST))  # load the session first

    with CaptureQueriesContext(connection) as unfiltered:
        response = admin_client.get(reverse(CHANGELIST))
    with CaptureQueriesContext(connection) as filtered:
        admin_client.get(reverse(CHANGELIST), {"task_name": "add"})

    # Counts of the list itself (the page's retries are counted per row, inside a query).
    counts = [q["sql"] for q in unfiltered.captured_queries
              if q["sql"].upper().startswith("SELECT COUNT(")]
    page = response.content.decode()
    if connection.vendor == "postgresql":
        assert counts == []
        assert any("reltuples" in q["sql"] for q in unfiltered.captured_queries)
        assert re.search(r">about 12</span> task executions", page)
    else:
        assert len(counts) == 1
        assert re.search(r"\n12 task executions", page)
    assert any("COUNT(" in q["sql"].upper() for q in filtered.captured_queries)


# Issue 17, item 12. Before: a page number far past the approximate end made the database
# skip that many rows (reading every row of the list), and past 2**63 rows the OFFSET
# overflowed: a 500.
FAR_PAGES = [10**6, 10**19, 10**200]


def run_table_offsets(captured):
    return [q["sql"] for q in captured.captured_queries
            if 'FROM "gyrinx_tasks_taskexecution"' in q["sql"] and "OFFSET" in q["sql"]]


def test_pages_past_the_highest_id_are_empty_without_a_query(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 3)
    for _ in range(5):
        make_run("echo")
    paginator = EstimatedCountPaginator(
        TaskExecution.objects.filter(task_name="echo").order_by("-created_at"), 2)
    assert paginator.is_approximate and paginator.is_capped
    assert len(paginator.page(3).object_list) == 1  # the real 5th row, past the counted end
    for number in FAR_PAGES:
        with CaptureQueriesContext(connection) as captured:
            assert list(paginator.page(number).object_list) == []
        assert run_table_offsets(captured) == []


def test_a_list_of_exactly_the_cap_is_counted_exactly(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 3)
    for _ in range(3):
        make_run("echo")
    make_run("add")
    paginator = EstimatedCountPaginator(
        TaskExecution.objects.filter(task_name="echo").order_by("pk"), 2)
    assert paginator.count == 3
    assert not paginator.is_capped and not paginator.is_approximate


def test_a_page_starting_exactly_at_the_highest_id_is_empty_without_a_query(monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 1)
    for _ in range(3):
        make_run("echo")
    paginator = EstimatedCountPaginator(
        TaskExecution.objects.filter(task_name="echo").order_by("pk"), 1)
    assert paginator.is_approximate
    # Ids count up from 1, so no list has more rows than the highest id: a page that skips
    # that many is empty, and is answered without asking the database to skip them.
    number = paginator.row_bound + 1
    with CaptureQueriesContext(connection) as captured:
        assert list(paginator.page(number).object_list) == []
    assert run_table_offsets(captured) == []


def test_changelist_pages_far_past_the_end_answer_at_once(admin_client, monkeypatch):
    from gyrinx_tasks.admin.executions import TaskExecutionAdmin

    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 3)
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)
    monkeypatch.setattr(TaskExecutionAdmin, "list_per_page", 2)
    for _ in range(6):
        make_run("echo")
    if connection.vendor == "postgresql":
        analyze()
    lists = [{"task_name": "echo"}]  # capped: "more than 3"
    if connection.vendor == "postgresql":
        lists.append({})  # unfiltered: the planner's estimate
    for params in lists:
        for number in FAR_PAGES:
            with CaptureQueriesContext(connection) as captured:
                response = admin_client.get(reverse(CHANGELIST), {**params, "p": number})
            assert response.status_code == 200, (params, number)
            assert shown(response) == []
            assert run_table_offsets(captured) == []
        # A page that exists still shows its runs.
        assert len(shown(admin_client.get(reverse(CHANGELIST), {**params, "p": 3}))) == 2


# A page number below 1 is no page: on a capped (or estimated) list it used to reach the
# slicing as a negative offset, a 500. Django's answer for any bad page: back to the list.
@pytest.mark.parametrize("number", [0, -1, -(10**20)])
def test_a_page_number_below_1_goes_back_to_the_list_not_a_500(
        admin_client, monkeypatch, number):
    from gyrinx_tasks.admin.executions import TaskExecutionAdmin

    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 3)
    monkeypatch.setattr(TaskExecutionAdmin, "list_per_page", 2)
    for _ in range(5):
        make_run("echo")
    for params in ({"task_name": "echo"}, {}):  # capped, and counted exactly
        response = admin_client.get(reverse(CHANGELIST), {**params, "p": number})
        assert response.status_code == 302, (params, response.status_code)
        assert response["Location"].endswith("?e=1")
    paginator = EstimatedCountPaginator(
        TaskExecution.objects.filter(task_name="echo").order_by("pk"), 2)
    assert paginator.is_approximate and paginator.is_capped
    with pytest.raises(EmptyPage):
        paginator.page(number)


# --- Task execution detail -----------------------------------------------------------------

def test_change_view_shows_payload_errors_per_attempt_and_timeline(admin_client):
    run = make_run("flaky", State.FAILED, args=[1, "two"], kwargs={"key": "k-1"},
                   worker_ids=["worker-a", "worker-b"], message_id="m-77", delivery_attempt=2,
                   attempts=2)
    run.errors = [
        {"exception_class_path": "builtins.ValueError", "attempt": 1,
         "at": "2026-11-23T10:00:00+00:00",
         "traceback": "Traceback (most recent call last):\nValueError: first <try>"},
        {"exception_class_path": "builtins.ConnectionError", "attempt": 2,
         "at": "2026-11-23T10:00:30+00:00",
         "traceback": "Traceback (most recent call last):\nConnectionError: second"},
    ]
    run.timeline = [
        {"at": "2026-11-23T09:59:59+00:00", "from": "", "to": "READY", "note": "enqueued"},
        {"at": "2026-11-23T10:00:00+00:00", "from": "READY", "to": "RUNNING",
         "note": "attempt 1 on worker-a"},
        {"at": "2026-11-23T10:00:01+00:00", "from": "RUNNING", "to": "FAILED",
         "note": "attempt 1: builtins.ValueError"},
    ]
    run.save()

    response = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                                        args=[run.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="error-1"' in page and 'id="error-2"' in page
    # What went wrong comes right after the summary, before the other fields.
    assert page.index('id="error-1"') < page.index(">Identity<") < page.index("gyrinx-timeline")
    first, second = page.split('id="error-2"')
    assert "Attempt 1" in first and "builtins.ValueError" in first
    assert "first &lt;try&gt;" in first  # tracebacks are escaped, not rendered
    assert "Attempt 2" in second and "builtins.ConnectionError" in second
    timeline = page.split("gyrinx-timeline", 1)[1]
    assert timeline.count("<tr>") == 4  # header + three entries
    assert "attempt 1 on worker-a" in timeline and "RUNNING" in timeline
    # Stored ISO times render in the admin's one format, to the second, zone printed.
    assert "23 Nov 2026, 09:59:59 UTC" in timeline
    assert "23 Nov 2026, 10:00:30 UTC" in second  # the error's time too
    assert "&quot;key&quot;: &quot;k-1&quot;" in page and "&quot;two&quot;" in page
    assert "worker-a, worker-b" in page and "m-77" in page
    # Read-only: no save buttons, and the raw-message block only shows for rejections.
    assert 'name="_save"' not in page
    assert "Raw message" not in page


def test_change_view_has_a_compact_attempt_table_above_errors_and_timeline(admin_client):
    t0 = timezone.now().replace(microsecond=0) - timedelta(hours=1)

    def at(seconds):
        return (t0 + timedelta(seconds=seconds)).isoformat()

    run = make_run("flaky", State.SUCCESSFUL, attempts=3, enqueued_at=t0,
                   worker_ids=["worker-a", "worker-b", "worker-c"])
    run.timeline = [
        {"at": at(0), "from": "", "to": "READY", "note": "enqueued"},
        {"at": at(2), "from": "READY", "to": "RUNNING", "note": "attempt 1 on worker-a"},
        {"at": at(2.25), "from": "RUNNING", "to": "FAILED",
         "note": "attempt 1: builtins.ValueError"},
        {"at": at(12.25), "from": "FAILED", "to": "RUNNING", "note": "attempt 2 on worker-b"},
        # Attempt 2 never ended (its worker died); attempt 3 took over.
        {"at": at(400), "from": "RUNNING", "to": "RUNNING", "note": "attempt 3 on worker-c"},
        {"at": at(400.5), "from": "RUNNING", "to": "SUCCESSFUL"},
    ]
    run.errors = [error("builtins.ValueError", 1) | {"at": at(2.25)}]
    run.save()

    page = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                                    args=[run.pk])).content.decode()

    table = page[page.index('class="module gyrinx-attempts"'):]
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in
            re.findall(r'<tr class="gyrinx-attempt">(.*?)</tr>', table, re.S)]
    local = timezone.localtime

    def clock(seconds, day=False):
        at = t0 + timedelta(seconds=seconds)
        return format_when(at, seconds=True) if day else local(at).strftime("%H:%M:%S")

    assert rows == [
        f"1 {clock(2, True)} {clock(2.25)} 2.0 s 250 Failed builtins.ValueError worker-a",
        f"2 {clock(12.25, True)} – 10.0 s – cut off worker-b",
        # Waited since attempt 1 ended (a cut-off attempt has no end to count from).
        f"3 {clock(400, True)} {clock(400.5)} 6.6 min 500 Successful worker-c",
    ]
    # On the first screen: after the summary, before the errors, payload and timeline.
    assert (page.index(">Attempts<") < page.index('id="error-1"') < page.index(">Payload<")
            < page.index("gyrinx-timeline"))
    assert page.index(">Attempts<") < page.index(">Identity<")


def test_attempt_table_is_left_out_for_a_run_that_never_started(admin_client):
    run = make_run("add")
    page = admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_change",
                                    args=[run.pk])).content.decode()
    assert "gyrinx-attempts" not in page


def test_change_view_shows_the_raw_message_of_a_rejected_run(admin_client):
    raw = json.dumps({"task_id": "t-1", "task_name": "nope", "args": [], "kwargs": {}})
    run = make_run("nope", State.REJECTED, raw_message=raw,
                   status_detail="No route in TASKS_REGISTRY is named 'nope'.")
    page = admin_client.get(
        reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])).content.decode()
    assert "Raw message" in page
    assert "&quot;task_name&quot;: &quot;nope&quot;" in page
    assert "gyrinx-errors" not in page  # no empty errors block
    assert "No route in TASKS_REGISTRY is named" in page


def test_change_view_shows_the_return_value_of_a_successful_run(admin_client):
    run = make_run("add", State.SUCCESSFUL, args=[2, 3], return_value=5)
    page = admin_client.get(
        reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])).content.decode()
    assert "Return value" in page and '<pre class="gyrinx-pre">5</pre>' in page


def test_runs_cannot_be_added_or_edited(admin_client):
    run = make_run("add")
    assert admin_client.get(reverse("admin:gyrinx_tasks_taskexecution_add")).status_code == 403
    change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])
    response = admin_client.post(change, {"task_name": "echo", "status": "SUCCESSFUL"})
    assert response.status_code == 403
    run.refresh_from_db()
    assert (run.task_name, run.status) == ("add", State.READY)


def test_only_superusers_delete_runs(client, admin_client):
    run = make_run("add")
    staff = staff_user("staff", "view_taskexecution", "delete_taskexecution")
    client.force_login(staff)
    delete = reverse("admin:gyrinx_tasks_taskexecution_delete", args=[run.pk])

    assert client.post(delete, {"post": "yes"}).status_code == 403
    response = client.post(reverse(CHANGELIST),
                           {"action": "delete_selected", "_selected_action": [run.pk]})
    assert response.status_code == 403
    assert TaskExecution.objects.filter(pk=run.pk).exists()

    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not TaskExecution.objects.filter(pk=run.pk).exists()


def test_staff_without_permission_cannot_see_runs(client):
    client.force_login(staff_user("nobody"))
    assert client.get(reverse(CHANGELIST)).status_code == 403


# --- In a real browser ---------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_staff_log_in_and_see_a_run(page, live_server):
    """`page` comes from the `browser` fixture (tests/infra/browser.py): real Chromium."""
    User.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    run = make_run("flaky", State.FAILED)

    page.goto(f"{live_server.url}{reverse(CHANGELIST)}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    row = page.locator("#result_list tbody tr").first
    assert run.result_id[:8] in row.inner_text()
    assert row.locator(".gyrinx-status-failed").inner_text() == "Failed"
    row.locator("th a").click()
    page.wait_for_selector(".gyrinx-timeline")
    assert "enqueued" in page.locator(".gyrinx-timeline").inner_text()


# --- Nothing changes on GET (issue 17, item 13) ----------------------------------------------

def our_admin_urls():
    """(name, pattern) of every admin URL of this app, found in the admin site's URLconf."""
    from django.contrib import admin
    from django.urls import URLResolver

    found = []

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns)
            elif pattern.name and pattern.name.startswith("gyrinx_tasks_"):
                found.append((pattern.name, pattern))

    walk(admin.site.get_urls())
    return found


def test_no_get_of_any_of_our_admin_urls_writes_to_the_database(admin_client, monkeypatch):
    # Every admin URL of the app, including ones added later, as a superuser, as a page and
    # as an HTMX request: not one INSERT, UPDATE or DELETE. (Before issue 17 the stream
    # exported and wrote its audit entry on GET.)
    from gyrinx_tasks.admin import provisioning as provisioning_page
    from gyrinx_tasks.admin import schedules as schedules_page
    from gyrinx_tasks.models import KillSwitch
    from gyrinx_tasks.provisioning import ProvisioningError

    def no_gcp(*args, **kwargs):
        raise ProvisioningError("GCP is not reached in this test.")

    monkeypatch.setattr(provisioning_page, "read_plan", no_gcp)
    monkeypatch.setattr(schedules_page, "get_job", no_gcp)
    run = make_run("add", State.FAILED, args=[1], attempts=1)
    switch = KillSwitch.objects.create(task_name="retired_task", enabled=False, reason="r")
    object_ids = {"taskexecution": run.pk, "killswitch": switch.pk}
    admin_client.get(reverse(CHANGELIST))  # the session is saved before we start counting

    urls = our_admin_urls()
    assert len(urls) > 20
    for name, pattern in urls:
        kwargs = {}
        for key in pattern.pattern.converters:
            if key == "object_id":
                kwargs[key] = object_ids[name.split("_")[2]]
            elif key in ("task", "task_name"):
                kwargs[key] = "nightly_cleanup"  # a scheduled route of tests/registry.py
            else:
                raise AssertionError(f"Give {name}'s URL argument {key!r} a value here.")
        path = reverse(f"admin:{name}", kwargs=kwargs)
        for headers in ({}, {"HX-Request": "true"}):
            with CaptureQueriesContext(connection) as captured:
                response = admin_client.get(path, headers=headers)
            assert response.status_code < 500, (path, response.status_code)
            writes = [q["sql"] for q in captured.captured_queries
                      if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
            assert writes == [], (path, headers, writes)
