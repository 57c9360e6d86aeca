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
from django.db.migrations.state import ProjectState
from django.db.models import Index, Model


def _concurrently(operation: AddIndex | RemoveIndex, editor: BaseDatabaseSchemaEditor) -> bool:
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


def _add(
    operation: AddIndex | RemoveIndex,
    editor: BaseDatabaseSchemaEditor,
    model: type[Model],
    index: Index,
) -> None:
    # A CONCURRENTLY build that failed (or was interrupted) leaves an invalid index of this
    # name behind, and a migration that is not atomic may have built some of its indexes
    # before it stopped. The state says the index does not exist yet, so whatever has its name
    # is such a leftover: drop it, so that running migrate again succeeds.
    if _concurrently(operation, editor):
        editor.remove_index(model, index, concurrently=True)  # type: ignore[call-arg]
        editor.add_index(model, index, concurrently=True)  # type: ignore[call-arg]
        return
    if editor.connection.vendor == "sqlite":
        editor.execute(f"DROP INDEX IF EXISTS {editor.quote_name(index.name)}")
    editor.add_index(model, index)


def _remove(
    operation: AddIndex | RemoveIndex,
    editor: BaseDatabaseSchemaEditor,
    model: type[Model],
    index: Index,
) -> None:
    if _concurrently(operation, editor):
        editor.remove_index(model, index, concurrently=True)  # type: ignore[call-arg]
    else:
        editor.remove_index(model, index)


class AddIndexConcurrently(AddIndex):
    """AddIndex, built with ``CREATE INDEX CONCURRENTLY`` on PostgreSQL."""

    atomic = False

    def describe(self) -> str:
        return f"{super().describe()} (concurrently on PostgreSQL)"

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            _add(self, schema_editor, model, self.index)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            _remove(self, schema_editor, model, self.index)


class RemoveIndexConcurrently(RemoveIndex):
    """RemoveIndex, dropped with ``DROP INDEX CONCURRENTLY`` on PostgreSQL."""

    atomic = False

    def describe(self) -> str:
        return f"{super().describe()} (concurrently on PostgreSQL)"

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = from_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            _remove(self, schema_editor, model, index)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            _add(self, schema_editor, model, index)
