"""The hot path's statements, compiled once per database connection.

Each push delivery and each single ``enqueue()`` makes the same few statements with new
values. Building them through the ORM every time (a queryset, its filters, the compiler, the
model instance) is Python work repeated for every delivery, and a profile showed it costing
more than running the statements themselves (docs/performance.md has the figures). So the
SQL is still written by the ORM, once, for the connection's own database, and then run
directly with new parameters; values go through each field's own preparation and
conversion, as the ORM would do.

PostgreSQL and SQLite only. On any other database every function here falls back to the
ORM, and so does a statement whose compiled form is not as expected (see ``_compile``).
Model signals (pre_save/post_save) are still sent when something listens for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from contextlib import nullcontext
from functools import cache
from typing import Any

from django.apps import apps
from django.db import DatabaseError, connections, transaction
from django.db.models import NOT_PROVIDED, Subquery, signals

logger = logging.getLogger("gyrinx_tasks")


# The models are looked up when a statement is first needed, not imported: the models'
# transitions call this module, which sits below them.
@cache
def _runs() -> Any:  # the TaskExecution model
    return apps.get_model("gyrinx_tasks", "TaskExecution")


@cache
def _switches() -> Any:  # the KillSwitch model
    return apps.get_model("gyrinx_tasks", "KillSwitch")

VENDORS = ("postgresql", "sqlite")
# Stands for a parameter while a statement is compiled; must come back as the only params.
_SENTINEL = "\x00gyrinx-parameter\x00"
_UNCACHEABLE = object()


def _cache(using: str) -> dict[Any, Any] | None:
    """Statements compiled on this thread's connection to ``using``, or None for the ORM."""
    connection = connections[using]
    if connection.vendor not in VENDORS:
        return None
    # On the connection wrapper: one per thread and alias, as the compiled converters are.
    return connection.__dict__.setdefault("_gyrinx_statements", {})


def _compile(cache: dict[Any, Any], key: Any, build: Callable[..., Any],
             arity: int = 1) -> Any:
    """(sql, compiler, order) of ``build(*sentinels)``'s queryset, compiled once; None to use
    the ORM. ``order`` says which argument each of the statement's parameters is.

    The queryset must take each of its ``arity`` sentinel parameters exactly once: anything
    else (a backend that inlines values) is not cached and the ORM is used.
    """
    found = cache.get(key)
    if found is None:
        sentinels = [f"{_SENTINEL}{n}" for n in range(arity)]
        queryset = build(*sentinels)
        compiler = queryset.query.get_compiler(queryset.db)
        sql, params = compiler.as_sql()
        # Each parameter is an argument (its index) or a constant of the query (kept as is,
        # in a 1-tuple), such as the False of enabled=False on SQLite.
        order = [sentinels.index(param) if isinstance(param, str) and param in sentinels
                 else (param,) for param in params]
        arguments = sorted(item for item in order if isinstance(item, int))
        found = (sql, compiler, order) if arguments == list(range(arity)) else _UNCACHEABLE
        cache[key] = found
    return None if found is _UNCACHEABLE else found


def _parameters(order: list[Any], arguments: list[Any]) -> list[Any]:
    return [arguments[item] if isinstance(item, int) else item[0] for item in order]


# The columns select_run reads, in the order Model.from_db takes them.
@cache
def _model_names() -> list[str]:
    return [field.attname for field in _runs()._meta.concrete_fields]

# The annotation select_run(..., switch_for=...) adds: the task's kill switch mode if the
# database switches it off, else None.
SWITCH = "gyrinx_switch"


def select_run(using: str, column: str, value: str, lock: bool,
               switch_for: str | None = None, task_name: str | None = None
               ) -> Any:
    """The run whose ``column`` is ``value`` (SELECT ... FOR UPDATE NOWAIT if lock), and of
    the task ``task_name`` when given (message ids are unique within a topic only).

    ``switch_for``: also read that task's kill switch in the same statement, into the run's
    ``gyrinx_switch`` attribute (only when kill switches live in the same database).
    """
    if switch_for is not None and _switches().objects.db != using:
        switch_for = None

    def build(value: str, *more: str) -> Any:
        rest = list(more)
        runs = _runs().objects.using(using)
        if lock:
            runs = runs.select_for_update(nowait=True)
        filters = {column: value}
        if task_name is not None:
            filters["task_name"] = rest.pop(0)
        if switch_for is not None:
            runs = runs.annotate(**{SWITCH: Subquery(_switches().objects.using(using).filter(
                task_name=rest.pop(0), enabled=False).values("mode")[:1])})
        return runs.filter(**filters)[:1]

    arguments = [value]
    if task_name is not None:
        arguments.append(task_name)
    if switch_for is not None:
        arguments.append(switch_for)

    # FOR UPDATE outside a transaction (runner's unlocked read on PostgreSQL) holds no lock:
    # its NOWAIT only fails at once if another transaction holds the row. Django compiles
    # select_for_update only inside a transaction, so compile (or run the ORM) in one.
    outside = lock and not connections[using].in_atomic_block

    def orm() -> Any:
        with transaction.atomic(using=using) if outside else nullcontext():
            found = list(build(*arguments))
        return found[0] if found else None

    cache = _cache(using)
    if cache is None:
        return orm()
    key = ("select", column, lock, switch_for is not None, task_name is not None)
    with transaction.atomic(using=using) if outside and key not in cache else nullcontext():
        compiled = _compile(cache, key, build, arity=len(arguments))
    if compiled is None:
        return orm()
    sql, compiler, order = compiled
    model_names = _model_names()
    converters = cache.get(("converters", *key))
    if converters is None:
        columns = [col for col, _, _ in compiler.select]
        names = [getattr(col.target, "attname", None) for col in columns[:len(model_names)]]
        extra = 1 if switch_for is not None else 0
        if names != model_names or len(columns) != len(model_names) + extra:
            cache[key] = _UNCACHEABLE  # from_db needs the model's order
            return orm()
        converters = cache[("converters", *key)] = list(
            compiler.get_converters(columns).items())
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql, _parameters(order, arguments))
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for position, (functions, expression) in converters:
        item = values[position]
        for function in functions:
            item = function(item, expression, connection)
        values[position] = item
    execution = _runs().from_db(using, model_names, values[:len(model_names)])
    if switch_for is not None:
        setattr(execution, SWITCH, values[len(model_names)])
    return execution


def off_mode(task_name: str) -> str:
    """KillSwitch.off_mode(task_name) with the compiled statement: "" when switched on."""
    using = _switches().objects.db
    cache = _cache(using)
    compiled = _compile(cache, "off_mode", lambda name: _switches().objects.filter(
        task_name=name, enabled=False).values_list("mode", flat=True)[:1],
    ) if cache is not None else None
    if compiled is None:
        return _switches().off_mode(task_name)
    with connections[using].cursor() as cursor:
        cursor.execute(compiled[0], _parameters(compiled[2], [task_name]))
        row = cursor.fetchone()
    return row[0] if row else ""


def _fields(names: list[str]) -> list[Any]:
    return [_runs()._meta.get_field(name) for name in names]


def update_run(using: str, execution: Any, names: list[str],
               expect: dict[str, Any] | None = None) -> int:
    """UPDATE the run's ``names`` columns from ``execution``; return the rows changed.

    ``expect``: a compare-and-set; the row is changed only if each of these columns still
    holds the given value (JSON compared as JSON). Sends pre_save/post_save only with
    listeners, as Model.save(update_fields=...) would.
    """
    if not names:
        raise ValueError("update_run needs at least one column to write.")
    connection = connections[using]
    if connection.vendor not in VENDORS:
        return _update_with_orm(using, execution, names, expect)
    expect = expect or {}
    cache = _cache(using)
    assert cache is not None
    key = ("update", tuple(names), tuple(expect))
    found = cache.get(key)
    if found is None:
        quote = connection.ops.quote_name
        meta = _runs()._meta
        assert meta.pk is not None and meta.pk.column is not None and meta.db_table
        where = [f"{quote(meta.pk.column)} = %s"]
        indexed = {name for index in meta.indexes for name in index.fields}
        for field in _fields(list(expect)):
            column = quote(str(field.column))
            if field.get_internal_type() == "JSONField":
                # As Django's own JSON exact lookup compares: jsonb = jsonb, JSON(a) = JSON(b).
                where.append(f"{column} = %s" if connection.vendor == "postgresql"
                             else f"JSON({column}) = JSON(%s)")
            elif field.name in indexed or field.db_index:
                # Compared as an expression no index can serve, so that the planner always
                # finds the row by its primary key (PostgreSQL chose the status index instead).
                where.append(f"({column} || '') = %s")
            else:
                where.append(f"{column} = %s")
        sets = ", ".join(f"{quote(str(field.column))} = %s" for field in _fields(names))
        found = cache[key] = (f"UPDATE {quote(meta.db_table)} SET {sets} "
                              f"WHERE {' AND '.join(where)}",
                              _fields(names), _fields(list(expect)))
    sql, written, compared = found
    params = [field.get_db_prep_save(getattr(execution, field.attname), connection)
              for field in written]
    params.append(execution.pk)
    params.extend(field.get_db_prep_save(value, connection)
                  for field, value in zip(compared, expect.values(), strict=True))
    _pre_save(execution, using, names)
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        changed = cursor.rowcount
    if changed:
        _post_save(execution, using, names, created=False)
    return changed


def _update_with_orm(using: str, execution: Any, names: list[str],
                     expect: dict[str, Any] | None) -> int:
    if not expect:
        execution.save(using=using, update_fields=names)
        return 1
    _pre_save(execution, using, names)
    changed = _runs().objects.using(using).filter(pk=execution.pk, **expect).update(
        **{name: getattr(execution, name) for name in names})
    if changed:
        _post_save(execution, using, names, created=False)
    return changed


def insert_run(using: str, execution: Any, shared: Any = None,
               varying: Collection[str] = ()) -> None:
    """INSERT a new run (as ``execution.save(using=using)``) and set its primary key.

    ``shared``: a key for runs whose columns all hold the same values but ``varying`` (the
    runs of one task enqueued one way): the other columns' values are prepared for the
    database once per connection and key (see _shared_insert), only ``varying`` each time.
    """
    connection = connections[using]
    if connection.vendor not in VENDORS or not connection.features.can_return_columns_from_insert:
        execution.save(using=using)
        return
    cache = _cache(using)
    assert cache is not None
    meta = _runs()._meta
    fields = [field for field in meta.concrete_fields if field is not meta.pk]
    sql = cache.get("insert")
    if sql is None:
        sql = cache["insert"] = _insert_sql(connection, fields, ["%s"] * len(fields))
    _pre_save(execution, using, None)
    template = cache.get(("insert", shared)) if shared is not None else None
    if template is None:
        params = [field.get_db_prep_save(field.pre_save(execution, True), connection)
                  for field in fields]
        if shared is not None:
            cache[("insert", shared)] = _shared_insert(connection, fields, params, varying)
            cache[("insert-values", shared)] = (fields, params, varying)
    else:
        sql, params, changing = template
        params = list(params)
        for index, field in changing:
            params[index] = field.get_db_prep_save(field.pre_save(execution, True), connection)
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        execution.pk = cursor.fetchone()[0]
    execution._state.adding = False
    execution._state.db = using
    _post_save(execution, using, None, created=True)


def insert_shared(connection: Any, shared: Any, values: dict[str, Any],
                  encoded: dict[str, str] | None = None) -> bool:
    """INSERT a new run of the kind ``shared`` from only its varying columns' ``values``
    (by attname), the other columns as in the kind's first run insert_run wrote on this
    connection (``connection``: a wrapper from ``django.db.connections``); False, writing
    nothing, when it wrote none (or on another database): use insert_run.

    Shorter than insert_run's statement: no RETURNING, and the columns that are NULL in
    every such run (and have no database default) are left out, so the database fills
    them with NULL. ``encoded``: JSON columns' values already encoded as JSON text, sent as
    they are on PostgreSQL with psycopg 3 (the server parses them into jsonb, the value the
    field's own encoding gives) instead of being encoded again; elsewhere the field prepares
    ``values``. Sends no model signals: for callers that checked no receiver listens.
    """
    plan = _kind_plan(connection, shared, "insert-shared", _shared_plan)
    if plan is None:
        return False
    sql, params, changing = plan
    params = list(params)
    for index, field, as_text in changing:
        name = field.attname
        if as_text and encoded and name in encoded:
            params[index] = encoded[name]
        else:
            params[index] = field.get_db_prep_save(values[name], connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    except Exception:
        # Only when it fails, so that a run that inserts pays nothing for it.
        with transaction.mark_for_rollback_on_error(connection.alias):
            raise
    return True


def _kind_plan(connection: Any, shared: Any, name: str, build: Callable[..., Any]) -> Any:
    """The statement plan ``name`` for runs of the kind ``shared`` on ``connection``, built by
    ``build`` from the kind's first run (cached on the connection by insert_run) and cached
    beside it; None when this connection has written no run of the kind yet."""
    cache = connection.__dict__.get("_gyrinx_statements")
    if cache is None:
        return None
    plan = cache.get((name, shared))
    if plan is None:
        first = cache.get(("insert-values", shared))
        if first is None:
            return None
        plan = cache[(name, shared)] = build(connection, *first)
    return plan


# The runs buffer_shared holds on a connection wrapper until its next statement or COMMIT.
BUFFER = "_gyrinx_buffer"
# Set on a connection wrapper once its _commit and _rollback flush and discard the buffer.
HOOKED = "_gyrinx_commit_hooked"


class _Buffer:
    """Rows waiting on one connection: ``rows`` as (plan, varying values), in enqueue order;
    ``raw``, the database connection they belong to (a closed or replaced one drops them)."""

    __slots__ = ("raw", "rows")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.rows: list[tuple[tuple, list[Any]]] = []


def buffer_shared(connection: Any, shared: Any, values: dict[str, Any],
                  encoded: dict[str, str] | None = None) -> bool:
    """Hold a new run of the kind ``shared`` (as insert_shared takes it) to be inserted with
    the other runs held on ``connection``, in one statement, before the connection's next
    statement or its COMMIT; False, holding nothing, where insert_shared would write nothing.

    Only inside an atomic block (the caller checks). Each held row is written in the
    savepoint it was enqueued in: SAVEPOINT and RELEASE are statements like any other, so
    the rows go in before them, and a ROLLBACK TO SAVEPOINT drops the rows still held (all
    enqueued inside that savepoint, see _flush_first); every read in the transaction sees
    the rows (through psycopg2 the row is inserted at once instead, by insert_shared). What
    is held is written by ``flush_buffer``: from an execute wrapper (installed only while
    rows are held), and from the connection's ``_commit`` before it commits; its
    ``_rollback`` and ``_close`` drop them. The values are prepared here (JSON encoded), so
    a value the field refuses fails this call, not the flush, and the caller changing the
    arguments afterwards does not change the row.
    """
    if connection.vendor == "postgresql" and not _psycopg3():
        # Held rows are written and tested with psycopg 3 (COPY) and SQLite only; through
        # psycopg2 each row is inserted at once, as before.
        return insert_shared(connection, shared, values, encoded)
    plan = _kind_plan(connection, shared, "batch", _batch_plan)
    if plan is None:
        return False
    row = [encoded[field.attname] if as_text and encoded and field.attname in encoded
           else field.get_db_prep_save(values[field.attname], connection)
           for _, (field, as_text) in plan[2]]
    buffer = connection.__dict__.get(BUFFER)
    if buffer is None or not buffer.rows or buffer.raw is not connection.connection:
        if not connection.__dict__.get(HOOKED):
            _hook_transaction_end(connection)
        buffer = connection.__dict__[BUFFER] = _Buffer(connection.connection)
        # First in the list: a wrapper the caller adds later (execute_wrapper() pops the
        # last one on its way out) is never mistaken for this one.
        if _flush_first not in connection.execute_wrappers:
            connection.execute_wrappers.insert(0, _flush_first)
    buffer.rows.append((plan, row))
    return True


def held_rows(connection: Any) -> int:
    """How many runs buffer_shared holds on ``connection``, not yet written."""
    buffer = connection.__dict__.get(BUFFER)
    return len(buffer.rows) if buffer is not None else 0


def discard_buffer(connection: Any) -> None:
    """Drop the held rows unwritten (their transaction rolled back, or their connection is
    gone), and the execute wrapper with them."""
    buffer = connection.__dict__.pop(BUFFER, None)
    if buffer is not None:
        buffer.rows = []
    if _flush_first in connection.execute_wrappers:
        connection.execute_wrappers.remove(_flush_first)


def flush_buffer(connection: Any, committing: bool = False) -> None:
    """Insert the rows held on ``connection`` (see buffer_shared), in one statement per kind
    of run (COPY on PostgreSQL with psycopg 3, else executemany), and stop holding any.

    Rows of a connection that was closed (or replaced) since are dropped: their transaction
    is gone. If the insert fails, the transaction is marked for rollback (as a failed
    insert_shared marks it) and the error, a DatabaseError, is raised from the statement
    that was about to run, or from the commit.
    """
    buffer = connection.__dict__.get(BUFFER)
    if buffer is None:
        return
    rows, raw = buffer.rows, buffer.raw
    discard_buffer(connection)
    if not rows or raw is not connection.connection or connection.closed_in_transaction:
        return
    if not committing and not connection.in_atomic_block:
        # Their transaction ended without its COMMIT or ROLLBACK passing here (Django's
        # internals moved): never written outside it, never into another.
        logger.error("gyrinx_tasks: %d run(s) enqueued with publish_on_commit were dropped "
                     "unwritten: their transaction ended before they were written.", len(rows))
        return
    try:
        with transaction.mark_for_rollback_on_error(connection.alias):
            try:
                start = 0
                for end in range(1, len(rows) + 1):
                    if end == len(rows) or rows[end][0] is not rows[start][0]:
                        _write(connection, rows[start][0], [row for _, row in rows[start:end]])
                        start = end
            except DatabaseError:
                raise
            except Exception as exc:  # Atomic rolls back on a DatabaseError only
                raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc
    except DatabaseError as exc:
        exc.add_note(
            f"gyrinx_tasks: writing the {len(rows)} run(s) enqueued with publish_on_commit "
            "since the transaction's previous statement failed. Such runs are written just "
            "before the next statement or the COMMIT, so the error is raised there, not by "
            "enqueue(). The transaction is marked for rollback (at a COMMIT: rolled back) "
            "and none of these runs is published.")
        raise


def _write(connection: Any, plan: tuple, rows: list[list[Any]]) -> None:
    kind, statement, changing, template = plan
    if kind == "copy":
        with connection.wrap_database_errors, connection.cursor() as cursor, \
                cursor.copy(statement) as copy:  # type: ignore[attr-defined]
            for values in rows:
                row = list(template)
                for (index, _), value in zip(changing, values, strict=True):
                    row[index] = value
                copy.write_row(row)
        return
    params = []
    for values in rows:
        row = list(template)
        for (index, _), value in zip(changing, values, strict=True):
            row[index] = value
        params.append(row)
    with connection.cursor() as cursor:
        if kind == "values":  # one INSERT of up to VALUES_ROWS rows
            head, one = statement
            size = min(VALUES_ROWS,
                       (connection.features.max_query_params or 65535) // len(template))
            for start in range(0, len(params), size):
                chunk = params[start:start + size]
                cursor.execute(head + ", ".join([one] * len(chunk)),
                               [value for row in chunk for value in row])
            return
        for start in range(0, len(params), 1000):
            cursor.executemany(statement, params[start:start + 1000])


# Rows per statement of the "values" way (benchmarks/oncommit_split.py measures it).
VALUES_ROWS = 500


def _batch_plan(connection: Any, fields: list[Any], params: list[Any],
                varying: Collection[str], way: str = "") -> tuple:
    """flush_buffer's (kind, statement, changing, template) for runs of one kind, from its
    first run's fields and prepared ``params``: ``changing`` holds, per varying column, its
    (index in the row, field) and whether JSON text may be sent; ``template``, the row with
    the shared values (those NULL in every such run and without database default left
    out, as in insert_shared).

    ``way``: "copy" (PostgreSQL with psycopg 3 only), "values" (multi-row INSERTs) or
    "many" (executemany); by default COPY where it can be used, which
    benchmarks/oncommit_split.py measured fastest, else executemany."""
    kept = [(field, param) for field, param in zip(fields, params, strict=True)
            if field.attname in varying or param is not None
            or field.db_default is not NOT_PROVIDED]
    fields, template = [field for field, _ in kept], [param for _, param in kept]
    indexes = [index for index, field in enumerate(fields) if field.attname in varying]
    copy_possible = connection.vendor == "postgresql" and _psycopg3()
    if way == "copy" or (not way and copy_possible):
        assert copy_possible, "COPY needs PostgreSQL with psycopg 3"
        quote = connection.ops.quote_name
        statement = (f"COPY {quote(_runs()._meta.db_table)} "
                     f"({', '.join(quote(str(field.column)) for field in fields)}) FROM STDIN")
        # COPY's text format: JSON text is parsed by the server, as insert_shared sends it.
        return ("copy", statement,
                [(index, (fields[index], fields[index].get_internal_type() == "JSONField"))
                 for index in indexes], template)
    meta = _runs()._meta
    assert meta.pk is not None and meta.pk.column is not None
    statement = _insert_sql(connection, fields, ["%s"] * len(fields))
    returning = f" RETURNING {connection.ops.quote_name(meta.pk.column)}"
    assert statement.endswith(returning), statement
    statement = statement[:-len(returning)]
    changing = [(index, (fields[index], False)) for index in indexes]
    if way == "values":
        head, _, one = statement.rpartition("VALUES ")
        return ("values", (head + "VALUES ", one), changing, template)
    return ("many", statement, changing, template)


def _flush_first(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
    """The execute wrapper installed while rows are held: writes them, then the statement.

    Before a ROLLBACK TO SAVEPOINT the rows are dropped instead: every savepoint was made by
    a statement, which wrote the rows held before it, so the rows still held were all
    enqueued inside the savepoint being rolled back. Writing them would only be undone, and
    would fail in a transaction a failed statement has aborted (PostgreSQL), turning the
    savepoint's rollback into the whole transaction's.
    """
    if isinstance(sql, str) and sql[:11].upper() == "ROLLBACK TO":
        discard_buffer(context["connection"])
    else:
        flush_buffer(context["connection"])
    return execute(sql, params, many, context)


def _hook_transaction_end(connection: Any) -> None:
    """Make ``connection`` write its held rows before it commits, and drop them when it rolls
    back or closes. Django has no hook before a COMMIT (on_commit() runs after it), and its
    COMMIT, ROLLBACK and close are no statements (BaseDatabaseWrapper.commit() calls
    self._commit(), which calls the driver's commit(); likewise rollback() and close()): the
    three private methods are wrapped on this connection wrapper only, once. (A closed
    connection's rows are dropped even if a pool hands the same driver connection back.)
    tests/test_publish_on_commit_batch.py fails if Django's moved."""
    commit, rollback, close = connection._commit, connection._rollback, connection._close

    def _commit() -> Any:
        flush_buffer(connection, committing=True)  # raises: Atomic rolls back
        return commit()

    def _rollback() -> Any:
        discard_buffer(connection)
        return rollback()

    def _close() -> Any:
        discard_buffer(connection)
        return close()

    connection._commit, connection._rollback, connection._close = _commit, _rollback, _close
    connection.__dict__[HOOKED] = True


def _shared_plan(connection: Any, fields: list[Any], params: list[Any],
                 varying: Collection[str]) -> tuple[str, list[Any], list[tuple[int, Any, bool]]]:
    """insert_shared's (sql, params, changing) from the first run's fields and prepared
    ``params``; ``changing``: (index in params, field, whether JSON text may be sent)."""
    kept = [(field, param) for field, param in zip(fields, params, strict=True)
            if field.attname in varying or param is not None
            or field.db_default is not NOT_PROVIDED]
    fields, params = [field for field, _ in kept], [param for _, param in kept]
    sql, shared_params, changing = _shared_insert(connection, fields, params, varying)
    meta = _runs()._meta
    assert meta.pk is not None and meta.pk.column is not None
    returning = f" RETURNING {connection.ops.quote_name(meta.pk.column)}"
    assert sql.endswith(returning), sql
    text = connection.vendor == "postgresql" and _psycopg3()
    return sql[:-len(returning)], shared_params, [
        (index, field, text and field.get_internal_type() == "JSONField")
        for index, field in changing]


def _insert_sql(connection: Any, fields: list[Any], values: list[str]) -> str:
    meta = _runs()._meta
    assert meta.pk is not None and meta.pk.column is not None
    quote = connection.ops.quote_name
    return (f"INSERT INTO {quote(meta.db_table)} "
            f"({', '.join(quote(str(field.column)) for field in fields)}) "
            f"VALUES ({', '.join(values)}) RETURNING {quote(meta.pk.column)}")


def _shared_insert(connection: Any, fields: list[Any], params: list[Any],
                   varying: Collection[str]) -> tuple[str, list[Any], list[tuple[int, Any]]]:
    """(sql, params, changing) to insert runs that share every column but ``varying``, from
    one such run's ``params``; ``changing`` is each varying column's (index in params, field).

    On PostgreSQL with psycopg 3 the shared values are written into the statement as
    literals, quoted by psycopg (``sql.Literal``) as it quotes the parameters of Django's
    client-side-binding cursor, so each insert sends only the varying ones: psycopg adapts
    and quotes every parameter on every execute. Elsewhere every value stays a parameter,
    the shared ones prepared once.
    """
    changing = [(index, field) for index, field in enumerate(fields)
                if field.attname in varying]
    if connection.vendor != "postgresql" or not _psycopg3():
        return _insert_sql(connection, fields, ["%s"] * len(fields)), params, changing
    from psycopg import sql as psycopg_sql

    connection.ensure_connection()
    values = ["%s" if field.attname in varying
              # % doubled: the statement still has placeholders.
              else psycopg_sql.Literal(param).as_string(connection.connection).replace("%", "%%")
              for field, param in zip(fields, params, strict=True)]
    return (_insert_sql(connection, fields, values), [params[index] for index, _ in changing],
            [(n, field) for n, (_, field) in enumerate(changing)])


@cache
def _psycopg3() -> bool:
    # Imported only on PostgreSQL: the module imports psycopg or psycopg2, and a project on
    # SQLite may have neither installed.
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return is_psycopg3


def _pre_save(execution: Any, using: str, names: list[str] | None) -> None:
    if signals.pre_save.has_listeners(_runs()):
        signals.pre_save.send(sender=_runs(), instance=execution, raw=False, using=using,
                              update_fields=frozenset(names) if names else None)


def _post_save(execution: Any, using: str, names: list[str] | None,
               created: bool) -> None:
    if signals.post_save.has_listeners(_runs()):
        signals.post_save.send(sender=_runs(), instance=execution, created=created,
                               update_fields=frozenset(names) if names else None, raw=False,
                               using=using)
