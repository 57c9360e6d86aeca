"""The models and the migrations agree, on whichever Django runs the suite (the Django 6.0
run too: its autodetector must find nothing to migrate either); the migrations that index the
runs' table build their indexes concurrently on PostgreSQL, and go back and forth."""

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import NotSupportedError, connection, models
from django.db.migrations.loader import MigrationLoader

from gyrinx_tasks.migration_operations import AddIndexConcurrently
from gyrinx_tasks.models import TaskExecution


@pytest.mark.django_db
def test_the_models_need_no_new_migration():
    out = StringIO()
    try:
        call_command("makemigrations", "gyrinx_tasks", "--check", "--dry-run", stdout=out)
    except SystemExit as exit_:  # --check exits 1 when a migration is missing
        pytest.fail(f"makemigrations --check exited {exit_.code}:\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()


# --- Index migrations on the runs' table (0003, 0007, 0012) ---------------------------------
# A plain CREATE INDEX blocks the table's writes (every enqueue and delivery) until the index
# is built; on PostgreSQL these migrations build and drop their indexes CONCURRENTLY instead,
# so they cannot run in a transaction. Elsewhere they run a plain CREATE INDEX.

CONCURRENT_MIGRATIONS = [
    "0003_overview_window_index",
    "0007_run_list_search_indexes",
    "0012_stuckrun_unrecovered_index",
]
# The indexes those migrations leave on the runs' table (0012 rebuilds gyrinx_exec_unrecovered).
CONCURRENT_INDEXES = [
    "gyrinx_exec_window",
    "gyrinx_exec_error_class",
    "gyrinx_exec_unrecovered",
    "gyrinx_exec_recovered_by",
]


def _index_definition(name: str) -> str | None:
    """The index as the database states it (None when it does not exist); on PostgreSQL only
    a valid index counts (a failed CONCURRENTLY build leaves an invalid one)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                [name],
            )
            row = cursor.fetchone()
            if row is None:
                return None
            assert row[1], f"{name} exists but is not valid"
            return row[0]
        cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = %s", [name])
        row = cursor.fetchone()
        return None if row is None else row[0]


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses an open transaction
@pytest.mark.parametrize("name", CONCURRENT_MIGRATIONS)
def test_index_migrations_are_not_atomic_and_build_concurrently_on_postgresql(name):
    loader = MigrationLoader(connection)
    assert loader.get_migration("gyrinx_tasks", name).atomic is False
    for backwards in (False, True):
        out = StringIO()
        call_command("sqlmigrate", "gyrinx_tasks", name, backwards=backwards, stdout=out)
        sql = out.getvalue()
        statements = [line for line in sql.splitlines() if re.match(r"(CREATE|DROP) INDEX", line)]
        assert statements, sql
        assert "BEGIN;" not in sql  # no transaction around the migration
        if connection.vendor == "postgresql":
            assert all(
                re.match(r"(CREATE INDEX|DROP INDEX) CONCURRENTLY ", s) for s in statements
            ), sql
        else:
            assert not any("CONCURRENTLY" in s for s in statements), sql


@pytest.mark.django_db(transaction=True)
def test_index_migrations_go_back_and_forth_and_build_the_same_indexes():
    target = "0012_stuckrun_unrecovered_index"
    built = {name: _index_definition(name) for name in CONCURRENT_INDEXES}
    assert all(built.values()), built
    assert "gave_up" in built["gyrinx_exec_unrecovered"]
    try:
        # Back to before 0012: gyrinx_exec_unrecovered is 0007's, without the give-up branch.
        call_command("migrate", "gyrinx_tasks", "0011", verbosity=0)
        before_0012 = _index_definition("gyrinx_exec_unrecovered")
        assert before_0012 and "gave_up" not in before_0012 and "REJECTED" in before_0012
        # Back to before 0007, then 0003: their indexes are gone.
        call_command("migrate", "gyrinx_tasks", "0006", verbosity=0)
        assert [n for n in CONCURRENT_INDEXES if _index_definition(n)] == ["gyrinx_exec_window"]
        call_command("migrate", "gyrinx_tasks", "0002", verbosity=0)
        assert not any(_index_definition(n) for n in CONCURRENT_INDEXES)
    finally:
        call_command("migrate", "gyrinx_tasks", target, verbosity=0)
    assert {name: _index_definition(name) for name in CONCURRENT_INDEXES} == built


@pytest.mark.django_db(transaction=True)
def test_a_concurrently_built_index_is_the_one_a_plain_create_index_builds():
    concurrent = {name: _index_definition(name) for name in CONCURRENT_INDEXES}
    indexes = {index.name: index for index in TaskExecution._meta.indexes}
    with connection.schema_editor() as editor:  # in a transaction, so a plain CREATE INDEX
        for name in CONCURRENT_INDEXES:
            editor.remove_index(TaskExecution, indexes[name])
            editor.add_index(TaskExecution, indexes[name])
    assert {name: _index_definition(name) for name in CONCURRENT_INDEXES} == concurrent


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_postgresql_refuses_and_other_databases_build_plainly():
    index = models.Index(fields=["task_name"], name="gyrinx_exec_test_only")
    operation = AddIndexConcurrently("taskexecution", index)
    before = MigrationLoader(connection).project_state()
    after = before.clone()
    operation.state_forwards("gyrinx_tasks", after)
    with connection.schema_editor() as editor:  # atomic
        if connection.vendor == "postgresql":
            with pytest.raises(NotSupportedError, match="inside a transaction"):
                operation.database_forwards("gyrinx_tasks", editor, before, after)
            assert _index_definition("gyrinx_exec_test_only") is None
        else:
            operation.database_forwards("gyrinx_tasks", editor, before, after)
            assert _index_definition("gyrinx_exec_test_only")
            operation.database_backwards("gyrinx_tasks", editor, after, before)
    assert _index_definition("gyrinx_exec_test_only") is None


@pytest.mark.django_db(transaction=True)
def test_after_a_build_that_stopped_part_way_migrate_again_succeeds():
    """A non-atomic migration that stops part way leaves some of its indexes behind (and on
    PostgreSQL a failed CONCURRENTLY build leaves an invalid index); running migrate again
    must not fail on them and must end with the same indexes."""
    built = {name: _index_definition(name) for name in CONCURRENT_INDEXES}
    try:
        call_command("migrate", "gyrinx_tasks", "0006", verbosity=0)
        with connection.cursor() as cursor:  # the first of 0007's indexes, left by a failure
            cursor.execute(
                "CREATE INDEX gyrinx_exec_error_class ON gyrinx_tasks_taskexecution (task_name)"
            )
            if connection.vendor == "postgresql":
                cursor.execute(
                    "UPDATE pg_index SET indisvalid = false"
                    " WHERE indexrelid = 'gyrinx_exec_error_class'::regclass"
                )
        call_command("migrate", "gyrinx_tasks", "0012", verbosity=0)
    finally:
        call_command("migrate", "gyrinx_tasks", "0012", verbosity=0)
    assert {name: _index_definition(name) for name in CONCURRENT_INDEXES} == built
