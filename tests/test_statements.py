"""The hot path's compiled statements (gyrinx_tasks/statements.py) against the ORM they replace.

Run on SQLite and on PostgreSQL (GYRINX_TEST_DB=postgres): each compares what the compiled
statement reads or writes with what Django's own queryset or save() reads or writes.
"""

import datetime

import pytest
from django.db import connection, connections, transaction
from django.db.models import signals
from django.test.utils import CaptureQueriesContext

from gyrinx_tasks import statements
from gyrinx_tasks.models import KillSwitch, State, SwitchMode, TaskExecution
from tests.helpers import envelope

pytestmark = pytest.mark.django_db

WHEN = datetime.datetime(2026, 11, 23, 10, 30, 15, 123456, tzinfo=datetime.UTC)


def full_run(**fields):
    values = dict(
        task_name="add", task_path="tests.tasks.add", args=[1, {"a": [None, 2.5]}],
        kwargs={"name": "é\u2603", "nested": {"x": True}}, return_value={"ok": [1, 2]},
        errors=[{"exception_class_path": "builtins.ValueError", "traceback": "tb",
                 "attempt": 1, "at": WHEN.isoformat()}],
        attempts=2, worker_ids=["vm:1", "vm:2"], status_detail="detail", message_id="m-77",
        delivery_attempt=3, enqueued_at=WHEN, started_at=WHEN, last_attempted_at=WHEN,
        timeline=[{"at": WHEN.isoformat(), "from": "", "to": "READY"}], timeline_omitted=4,
        errors_omitted=1, gave_up=False,
    )
    values.update(fields)
    return values


def as_dict(run):
    return {field.attname: getattr(run, field.attname)
            for field in TaskExecution._meta.concrete_fields}


@pytest.mark.parametrize("column", ["result_id", "message_id"])
@pytest.mark.parametrize("lock", [True, False])
def test_select_run_reads_what_the_orm_reads(column, lock):
    created = TaskExecution.objects.create(**full_run())
    expected = TaskExecution.objects.get(pk=created.pk)

    with transaction.atomic():
        found = statements.select_run("default", column, getattr(created, column), lock=lock)
        again = statements.select_run("default", column, getattr(created, column), lock=lock)

    assert as_dict(found) == as_dict(expected)
    assert as_dict(again) == as_dict(expected)  # the second use runs the cached statement
    assert found._state.adding is False and found._state.db == "default"
    assert isinstance(found.enqueued_at, datetime.datetime) and found.enqueued_at == WHEN


def test_select_run_finds_nothing_for_an_unknown_value():
    TaskExecution.objects.create(**full_run())
    with transaction.atomic():
        assert statements.select_run("default", "result_id", "no-such-run", lock=True) is None


def test_insert_run_writes_what_save_writes():
    by_orm = TaskExecution(**full_run(message_id="m-orm"))
    by_orm.save()
    compiled = TaskExecution(**full_run(message_id="m-compiled"))
    statements.insert_run("default", compiled)

    assert compiled.pk is not None and compiled._state.adding is False
    stored_orm = as_dict(TaskExecution.objects.get(pk=by_orm.pk))
    stored = as_dict(TaskExecution.objects.get(pk=compiled.pk))
    for name in ("id", "result_id", "task_id", "message_id", "created_at"):
        stored_orm.pop(name)
        stored.pop(name)
    assert stored == stored_orm


def test_insert_run_keeps_json_null_apart_from_sql_null():
    run = TaskExecution(**full_run(return_value=None))
    statements.insert_run("default", run)

    assert TaskExecution.objects.filter(pk=run.pk, return_value__isnull=True).exists()


def test_update_run_writes_the_named_columns_only():
    run = TaskExecution.objects.create(**full_run())
    stale = TaskExecution.objects.get(pk=run.pk)
    TaskExecution.objects.filter(pk=run.pk).update(status_detail="written elsewhere")
    stale.status = State.RUNNING
    stale.attempts = 3
    stale.timeline = [*stale.timeline, {"at": WHEN.isoformat(), "from": "READY",
                                        "to": "RUNNING"}]

    changed = statements.update_run("default", stale, ["status", "attempts", "timeline"])

    stored = TaskExecution.objects.get(pk=run.pk)
    assert changed == 1
    assert (stored.status, stored.attempts, len(stored.timeline)) == (State.RUNNING, 3, 2)
    assert stored.status_detail == "written elsewhere"  # not named: not overwritten


def test_update_run_compare_and_set():
    run = TaskExecution.objects.create(**full_run(status=State.RUNNING))
    seen = TaskExecution.objects.get(pk=run.pk)
    expect = {"status": State.RUNNING, "attempts": 2, "timeline": seen.timeline}
    seen.status_detail = "first writer"

    # Another writer appends to the timeline: the compare-and-set must not overwrite it.
    other = TaskExecution.objects.get(pk=run.pk)
    other.note("an older attempt's note")
    other.save(update_fields=["timeline", "timeline_omitted"])
    assert statements.update_run("default", seen, ["status_detail"], expect=expect) == 0
    assert TaskExecution.objects.get(pk=run.pk).status_detail == "detail"

    # With the row as it now is, it writes.
    current = TaskExecution.objects.get(pk=run.pk)
    current.status_detail = "second writer"
    assert statements.update_run("default", current, ["status_detail"], expect={
        "status": State.RUNNING, "attempts": 2, "timeline": current.timeline}) == 1
    assert TaskExecution.objects.get(pk=run.pk).status_detail == "second writer"
    assert statements.update_run("default", current, ["status_detail"], expect={
        "status": State.RUNNING, "attempts": 3, "timeline": current.timeline}) == 0


def test_update_run_compares_json_as_django_s_own_lookup_does():
    # Keys in another order: equal as jsonb on PostgreSQL, not as JSON text on SQLite. Either
    # way the compare-and-set agrees with filter(timeline=...).
    run = TaskExecution.objects.create(**full_run(status=State.RUNNING))
    reordered = [dict(reversed(list(entry.items()))) for entry in run.timeline]
    expected = TaskExecution.objects.filter(pk=run.pk, timeline=reordered).count()

    run.status_detail = "written"
    assert statements.update_run("default", run, ["status_detail"],
                                 expect={"timeline": reordered}) == expected


def test_off_mode_reads_what_the_model_reads():
    assert statements.off_mode("add") == KillSwitch.off_mode("add") == ""
    KillSwitch.objects.create(task_name="add", enabled=False, mode=SwitchMode.HOLD)
    KillSwitch.objects.create(task_name="echo", enabled=True, mode=SwitchMode.SKIP)

    assert statements.off_mode("add") == KillSwitch.off_mode("add") == SwitchMode.HOLD
    assert statements.off_mode("echo") == KillSwitch.off_mode("echo") == ""
    KillSwitch.objects.filter(task_name="add").update(mode=SwitchMode.SKIP)
    assert statements.off_mode("add") == SwitchMode.SKIP
    # It really ran compiled (a constant such as enabled=False does not stop that).
    sql, _compiler, order = connections["default"].__dict__["_gyrinx_statements"]["off_mode"]
    assert 0 in order and "killswitch" in sql


@pytest.mark.parametrize("lock", [True, False])
def test_select_run_reads_the_kill_switch_in_the_same_statement(lock):
    run = TaskExecution.objects.create(**full_run())
    KillSwitch.objects.create(task_name="echo", enabled=False, mode=SwitchMode.HOLD)
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        on = statements.select_run("default", "result_id", run.result_id, lock, "add")
        held = statements.select_run("default", "result_id", run.result_id, lock, "echo")
        plain = statements.select_run("default", "result_id", run.result_id, lock)

    assert (on.gyrinx_switch, held.gyrinx_switch) == (None, SwitchMode.HOLD)
    assert not hasattr(plain, "gyrinx_switch")
    assert as_dict(on) == as_dict(held) == as_dict(plain) == as_dict(
        TaskExecution.objects.get(pk=run.pk))
    assert len(captured.captured_queries) == 3


@pytest.mark.parametrize("path", ["compiled", "orm"])
def test_model_signals_are_sent_as_save_sends_them(path, monkeypatch):
    if path == "orm":
        monkeypatch.setattr(statements, "VENDORS", ())
    received = []

    def pre(sender, instance, update_fields, **kwargs):
        received.append(("pre", instance.pk is None, update_fields))

    def post(sender, instance, created, update_fields, **kwargs):
        received.append(("post", created, update_fields))

    signals.pre_save.connect(pre, sender=TaskExecution)
    signals.post_save.connect(post, sender=TaskExecution)
    try:
        run = TaskExecution(**full_run())
        statements.insert_run("default", run)
        run.status_detail = "changed"
        statements.update_run("default", run, ["status_detail"])
        statements.update_run("default", run, ["status_detail"], expect={"attempts": 99})
    finally:
        signals.pre_save.disconnect(pre, sender=TaskExecution)
        signals.post_save.disconnect(post, sender=TaskExecution)

    assert received == [
        ("pre", True, None), ("post", True, None),
        ("pre", False, frozenset({"status_detail"})), ("post", False, frozenset({"status_detail"})),
        # A compare-and-set that changed nothing saved nothing: no post_save.
        ("pre", False, frozenset({"status_detail"})),
    ]


def test_other_databases_use_the_orm(monkeypatch, client, settings):
    # A vendor outside VENDORS: every statement goes through the ORM, with the same results.
    settings.TASKS_VERIFY_OIDC = False
    monkeypatch.setattr(statements, "VENDORS", ())
    monkeypatch.setattr(statements, "_compile", lambda *args: pytest.fail("compiled"))
    run = TaskExecution(**full_run(status=State.READY, attempts=0, message_id=None))
    statements.insert_run("default", run)
    assert TaskExecution.objects.filter(pk=run.pk).exists()

    response = client.post("/tasks/pubsub/", envelope({
        "task_id": run.result_id, "task_name": "add", "args": [2, 3], "kwargs": {},
        "enqueued_at": WHEN.isoformat()}), content_type="application/json")

    assert response.json()["outcome"] == "ran"
    stored = TaskExecution.objects.get(pk=run.pk)
    assert (stored.status, stored.return_value) == (State.SUCCESSFUL, 5)
    assert [entry["to"] for entry in stored.timeline] == ["READY", "RUNNING", "SUCCESSFUL"]


def test_a_statement_that_does_not_compile_as_expected_is_left_to_the_orm():
    cache: dict = {}

    def two_parameters(value):  # the argument twice: its place in the SQL is ambiguous
        return TaskExecution.objects.filter(result_id=value, task_id=value)

    assert statements._compile(cache, "odd", two_parameters) is None
    assert statements._compile(cache, "odd", lambda: pytest.fail("compiled twice")) is None


def test_a_first_delivery_makes_three_statements(client, settings):
    # Lock the run and read its kill switch (one SELECT), mark it running, record the outcome.
    # benchmarks/push_wsgi.py's bare reference view makes four: it reads the switch apart.
    settings.TASKS_VERIFY_OIDC = False
    run = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add",
                                       args=[1, 1])
    body = envelope({"task_id": run.result_id, "task_name": "add", "args": [1, 1],
                     "kwargs": {}, "enqueued_at": WHEN.isoformat()})
    with CaptureQueriesContext(connection) as captured:
        response = client.post("/tasks/pubsub/", body, content_type="application/json")

    assert response.json()["outcome"] == "ran"
    statements_made = [query["sql"] for query in captured.captured_queries if not query[
        "sql"].upper().startswith(("SAVEPOINT", "RELEASE", "BEGIN", "COMMIT"))]
    assert [sql.split()[0].upper() for sql in statements_made] == ["SELECT", "UPDATE", "UPDATE"]
    assert "killswitch" in statements_made[0]


# The claim's read (select_run) relies on Django internals: the query compiler's as_sql(),
# select and get_converters(), Model.from_db() in concrete-field order, and a cache kept on
# the connection wrapper. docs/performance.md says why they are kept. If a Django release
# moves any of them, select_run falls back to the ORM silently and stays correct, but the
# push path loses what they are kept for: this test says so loudly instead.
@pytest.mark.parametrize("task_name", [None, "add"])
def test_the_claims_read_runs_the_compiled_statement_not_the_orm_fallback(task_name):
    created = TaskExecution.objects.create(**full_run())
    connections["default"].__dict__.pop("_gyrinx_statements", None)

    found = statements.select_run("default", "message_id", created.message_id, lock=True,
                                  switch_for="add", task_name=task_name)

    assert found is not None and found.pk == created.pk
    cache = connections["default"].__dict__.get("_gyrinx_statements")
    assert cache, "select_run no longer caches its statement on the connection"
    key = ("select", "message_id", True, True, task_name is not None)
    assert key in cache and cache[key] is not statements._UNCACHEABLE, (
        "Django's compiler no longer compiles select_run's statement as expected; the claim "
        "now runs through the ORM. Update gyrinx_tasks/statements.py (or drop it, and its "
        "figure in docs/performance.md).")
    assert ("converters", *key) in cache
