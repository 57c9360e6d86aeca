"""Runs of one task enqueued the same way are built from a template and inserted with their
shared columns prepared once per connection (backend.RunTemplate, statements.insert_run's
``shared``): each stored row must be what the ORM would have stored for that enqueue.

Run on SQLite and on PostgreSQL (GYRINX_TEST_DB=postgres), where the shared columns are
written into the statement as literals.
"""

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from gyrinx_tasks import backend as backend_module
from gyrinx_tasks import statements
from gyrinx_tasks.models import TaskExecution
from tests import tasks

pytestmark = pytest.mark.django_db


def as_dict(run):
    return {field.attname: getattr(run, field.attname)
            for field in TaskExecution._meta.concrete_fields}


def stored(result_id):
    return as_dict(TaskExecution.objects.get(result_id=result_id))


def test_every_column_with_a_default_made_per_run_is_set_for_each_run():
    # A new column whose default is computed per row (a uuid, a time) would otherwise be
    # copied from the first run to every later one.
    per_run = {field.attname for field in TaskExecution._meta.concrete_fields
               if field.has_default() and callable(field.default)
               and field.default not in (list, dict)}
    assert per_run <= set(backend_module.RUN_VARYING), per_run - set(backend_module.RUN_VARYING)


def test_runs_built_from_the_template_store_what_a_model_built_afresh_stores(fake_publisher):
    backend_module._templates.clear()
    first = tasks.add.enqueue(1, 2)  # builds the template
    second = tasks.add.enqueue(3, {"deep": [1.5, None]})  # built from it
    assert backend_module._templates, "the second enqueue did not use a template"

    expected = TaskExecution(
        task_name="add", task_path="tests.tasks.add", backend="default",
        args=[3, {"deep": [1.5, None]}], kwargs={}, queue_name="default", trigger="enqueue")
    rows = {result.id: stored(result.id) for result in (first, second)}
    row = rows[second.id]
    for name, value in as_dict(expected).items():
        if name not in ("id", *backend_module.RUN_VARYING):
            assert row[name] == value, name
    assert row["result_id"] == row["task_id"] == second.id != first.id
    assert row["args"] == [3, {"deep": [1.5, None]}] and row["kwargs"] == {}
    assert row["enqueued_at"] == row["created_at"] == second.enqueued_at
    assert [entry["note"] for entry in row["timeline"]] == ["enqueued"]
    assert row["enqueued_at"] >= rows[first.id]["enqueued_at"]
    # The message carries the second run's own id and arguments.
    assert [m["task_id"] for _, m, _ in fake_publisher.published] == [first.id, second.id]
    assert fake_publisher.published[1][1]["args"] == [3, {"deep": [1.5, None]}]


def test_runs_from_one_template_share_no_list_or_dict(fake_publisher):
    backend_module._templates.clear()
    tasks.add.enqueue(1, 2)
    one = backend_module._templates and next(iter(backend_module._templates.values()))
    a, b = one.run(None, [1], {}), one.run(None, [2], {})
    for name, value in as_dict(a).items():
        if isinstance(value, (list, dict)):
            assert value is not getattr(b, name), name
            assert value is not one.values[one.names.index(name)], name


def test_a_retry_is_not_kept_as_a_template(fake_publisher):
    original = TaskExecution.objects.create(task_name="add", task_path="tests.tasks.add")
    backend_module._templates.clear()
    with backend_module.enqueue_context("retry", retry_of_id=original.pk, note="a retry"):
        result = tasks.add.enqueue(1, 2)

    assert backend_module._templates == {}
    row = stored(result.id)
    assert row["retry_of_id"] == original.pk and row["trigger"] == "retry"
    assert [entry["note"] for entry in row["timeline"]] == ["a retry"]


@pytest.mark.django_db(transaction=True)
def test_publish_on_commit_enqueues_store_and_publish_each_run(fake_publisher, settings):
    settings.TASKS = {**settings.TASKS, "default": {
        "BACKEND": "gyrinx_tasks.backend.PubSubBackend",
        "OPTIONS": {"project_id": "test-project", "publish_on_commit": True}}}
    from django.tasks import task_backends

    from tests.helpers import use_publisher

    use_publisher(fake_publisher)
    try:
        with transaction.atomic():
            results = [tasks.add.enqueue(n, 1) for n in range(5)]
            # Each row exists before the commit: get_result() finds it inside the transaction.
            assert [task_backends["default"].get_result(r.id).args for r in results] == [
                [n, 1] for n in range(5)]
            assert fake_publisher.published == []
    finally:
        task_backends["default"].__dict__.pop("publisher", None)

    assert [m["task_id"] for _, m, _ in fake_publisher.published] == [r.id for r in results]
    assert sorted(TaskExecution.objects.values_list("result_id", flat=True)) == sorted(
        r.id for r in results)


def test_the_shared_insert_sends_only_the_varying_columns_and_keeps_percent_signs():
    # A shared column holding % (quoted into the statement on PostgreSQL) is stored as is.
    varying = backend_module.RUN_VARYING
    runs = [TaskExecution(task_name="add", task_path="tests.tasks.add",
                          status_detail="50% done, 100%% sure %s", args=[n]) for n in range(3)]
    for run in runs:
        run.task_id = run.result_id
    with CaptureQueriesContext(connection) as queries:
        for run in runs:
            statements.insert_run("default", run, ("test", "percent"), varying)

    for run in runs:
        row = stored(run.result_id)
        assert row["status_detail"] == "50% done, 100%% sure %s"
        assert row["args"] == run.args and row["id"] == run.pk
    sql, params, changing = connections["default"].__dict__["_gyrinx_statements"][
        ("insert", ("test", "percent"))]
    assert [field.attname for _, field in changing] == [
        field.attname for field in TaskExecution._meta.concrete_fields
        if field.attname in varying]
    if connection.vendor == "postgresql":
        # The shared columns are in the statement, quoted (% doubled for the placeholders);
        # only the varying ones are parameters.
        assert len(params) == len(varying) == sql.replace("%%", "").count("%s")
        assert "'50%% done, 100%%%% sure %%s'" in sql and "'tests.tasks.add'" in sql
    else:
        assert len(params) == len(TaskExecution._meta.concrete_fields) - 1
    assert len(queries.captured_queries) == 3
