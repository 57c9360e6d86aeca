"""The admin pages for task runs (kill switches: tests/test_killswitches.py)."""

import json
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gyrinx_tasks.admin.pagination import EstimatedCountPaginator
from gyrinx_tasks.models import State, TaskExecution, Trigger

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"
pytestmark = pytest.mark.django_db


def make_run(task_name="add", status=State.READY, trigger=Trigger.ENQUEUE, **fields):
    run = TaskExecution(task_name=task_name, task_path=f"tests.tasks.{task_name}",
                        trigger=trigger, **fields)
    run.task_id = run.task_id or run.result_id
    run._log("", State.READY, "enqueued")
    run.save()
    if status != State.READY:
        # Tests set the state directly; the transitions have their own tests.
        TaskExecution.objects.filter(pk=run.pk).update(status=status)
        run.refresh_from_db()
    return run


def staff_user(username, *codenames):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def shown(response):
    """The short result ids the changelist shows, in page order."""
    return re.findall(r'class="field-short_result_id"><a [^>]*>([0-9a-f]{8})</a>',
                      response.content.decode())


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

    # Session, user, one count, one page of rows: nothing per row or per filter choice.
    # PostgreSQL first reads the row estimate, which is too small here to be used.
    bound = 5 if connection.vendor == "postgresql" else 4
    with django_assert_max_num_queries(bound) as captured:
        response = admin_client.get(url)

    assert response.status_code == 200
    assert len(shown(response)) == 42
    assert not any("DISTINCT" in q["sql"].upper() for q in captured.captured_queries)
    # The heavy JSON columns are not loaded for the list.
    page_query = captured.captured_queries[-1]["sql"]
    assert '"traceback"' not in page_query and '"errors"' not in page_query
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

    counts = [q["sql"] for q in unfiltered.captured_queries if "COUNT(" in q["sql"].upper()]
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
