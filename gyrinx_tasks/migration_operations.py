"""Index operations for migrations on the runs' table that must not stop its writes.

A plain ``CREATE INDEX`` holds a lock that blocks every ``INSERT`` and ``UPDATE`` of the
table (every enqueue, every delivery) until the index is built, which on a table of millions
of runs takes minutes. On PostgreSQL these operations build and drop indexes
``CONCURRENTLY``, which lets writes go on. ``django.contrib.postgres.operations`` has the same
operations, but they refuse other databases (and need psycopg to import); these run a plain
``CREATE INDEX`` / ``DROP INDEX`` elsewhere, so one migration serves SQLite and PostgreSQL.

A migration using them sets ``atomic = False``: PostgreSQL cannot build an index concurrently
inside a transaction. Their state effect is AddIndex's and RemoveIndex's, so the autodetector
sees no difference. If one fails part way, running migrate again (on PostgreSQL or SQLite)
drops what it left (an invalid index, or the indexes it had built) and builds them again.
"""

from django.db import NotSupportedError
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations import AddIndex, RemoveIndex
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState


def _concurrently(operation: Operation, editor: BaseDatabaseSchemaEditor) -> bool:
    """True on PostgreSQL (after checking that no transaction is open), else False."""
    if editor.connection.vendor != "postgresql":
        return False
    if editor.connection.in_atomic_block:
        raise NotSupportedError(
            f"{operation.__class__.__name__} builds or drops an index CONCURRENTLY on "
            "PostgreSQL, which cannot run inside a transaction (set atomic = False on the "
            "migration, and do not run migrate inside transaction.atomic())."
        )
    return True


def _change(
    operation: AddIndex | RemoveIndex,
    editor: BaseDatabaseSchemaEditor,
    app_label: str,
    state: ProjectState,
    *,
    build: bool,
) -> None:
    """Build (or drop) the operation's index on its model as ``state`` has it."""
    model = state.apps.get_model(app_label, operation.model_name)
    if not operation.allow_migrate_model(editor.connection.alias, model):
        return
    if isinstance(operation, AddIndex):
        index = operation.index
    else:
        model_state = state.models[app_label, operation.model_name_lower]
        index = model_state.get_index_by_name(operation.name)
    concurrently = _concurrently(operation, editor)
    if not build:
        if concurrently:
            editor.remove_index(model, index, concurrently=True)  # type: ignore[call-arg]
        else:
            editor.remove_index(model, index)
        return
    # A CONCURRENTLY build that failed (or was interrupted) leaves an invalid index of this
    # name behind, and a migration that is not atomic may have built some of its indexes
    # before it stopped. The state says the index does not exist yet, so whatever has its name
    # is such a leftover: drop it, so that running migrate again succeeds.
    if concurrently:
        editor.remove_index(model, index, concurrently=True)  # type: ignore[call-arg]
        editor.add_index(model, index, concurrently=True)  # type: ignore[call-arg]
        return
    if editor.connection.vendor == "sqlite":
        editor.execute(f"DROP INDEX IF EXISTS {editor.quote_name(index.name)}")
    editor.add_index(model, index)


class _Concurrently:
    atomic = False

    def describe(self) -> str:
        return f"{super().describe()} (concurrently on PostgreSQL)"  # type: ignore[misc]


class AddIndexConcurrently(_Concurrently, AddIndex):
    """AddIndex, built with ``CREATE INDEX CONCURRENTLY`` on PostgreSQL."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        _change(self, schema_editor, app_label, to_state, build=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        _change(self, schema_editor, app_label, from_state, build=False)


class RemoveIndexConcurrently(_Concurrently, RemoveIndex):
    """RemoveIndex, dropped with ``DROP INDEX CONCURRENTLY`` on PostgreSQL."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        _change(self, schema_editor, app_label, from_state, build=False)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        _change(self, schema_editor, app_label, to_state, build=True)
