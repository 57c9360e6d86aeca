"""The hot path's statements, compiled once per database connection.

Each push delivery and each single ``enqueue()`` makes the same few statements with new
values. Building them through the ORM every time (a queryset, its filters, the compiler, the
model instance) cost several times the statements themselves: profiled, 0.9 ms of CPU for
the claim's SELECT against 0.2 ms for the same SQL on a cursor (docs/performance.md). So the
SQL is still written by the ORM, once, for the connection's own database, and then run
directly with new parameters; values go through each field's own preparation and
conversion, as the ORM would do.

PostgreSQL and SQLite only. On any other database every function here falls back to the
ORM, and so does a statement whose compiled form is not as expected (see ``_compile``).
Model signals (pre_save/post_save) are still sent when something listens for them.
"""

from collections.abc import Callable
from typing import Any

from django.db import connections, transaction
from django.db.models import signals

from .models import KillSwitch, TaskExecution

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


def _compile(cache: dict[Any, Any], key: Any, build: Callable[[], Any]) -> Any:
    """(sql, compiler) of ``build()``'s queryset, compiled once; None to use the ORM.

    The queryset must take exactly one parameter, ``_SENTINEL``: anything else (a backend
    that inlines values or adds its own) is not cached and the ORM is used instead.
    """
    found = cache.get(key)
    if found is None:
        queryset = build()
        compiler = queryset.query.get_compiler(queryset.db)
        sql, params = compiler.as_sql()
        found = (sql, compiler) if list(params) == [_SENTINEL] else _UNCACHEABLE
        cache[key] = found
    return None if found is _UNCACHEABLE else found


def select_run(using: str, column: str, value: str, lock: bool) -> TaskExecution | None:
    """The run whose unique ``column`` is ``value`` (SELECT ... FOR UPDATE NOWAIT if lock)."""
    def build() -> Any:
        runs = TaskExecution.objects.using(using)
        if lock:
            runs = runs.select_for_update(nowait=True)
        return runs.filter(**{column: _SENTINEL})[:1]

    def orm() -> TaskExecution | None:
        runs = TaskExecution.objects.using(using)
        if lock:
            runs = runs.select_for_update(nowait=True)
        found = list(runs.filter(**{column: value})[:1])
        return found[0] if found else None

    cache = _cache(using)
    if cache is None:
        return orm()
    compiled = _compile(cache, ("select", column, lock), build)
    if compiled is None:
        return orm()
    sql, compiler = compiled
    converters = cache.get(("converters", column, lock))
    if converters is None:
        columns = [col for col, _, _ in compiler.select]
        names = [col.target.attname for col in columns]
        if names != [field.attname for field in TaskExecution._meta.concrete_fields]:
            cache[("select", column, lock)] = _UNCACHEABLE  # from_db needs the model's order
            return orm()
        converters = cache[("converters", column, lock)] = (
            names, list(compiler.get_converters(columns).items()))
    names, by_position = converters
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql, [value])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for position, (functions, expression) in by_position:
        item = values[position]
        for function in functions:
            item = function(item, expression, connection)
        values[position] = item
    return TaskExecution.from_db(using, names, values)


def off_mode(task_name: str) -> str:
    """KillSwitch.off_mode(task_name) with the compiled statement: "" when switched on."""
    using = KillSwitch.objects.db
    cache = _cache(using)
    compiled = _compile(cache, "off_mode", lambda: KillSwitch.objects.filter(
        task_name=_SENTINEL, enabled=False).values_list("mode", flat=True)[:1],
    ) if cache is not None else None
    if compiled is None:
        return KillSwitch.off_mode(task_name)
    with connections[using].cursor() as cursor:
        cursor.execute(compiled[0], [task_name])
        row = cursor.fetchone()
    return row[0] if row else ""


def _fields(names: list[str]) -> list[Any]:
    return [TaskExecution._meta.get_field(name) for name in names]


def update_run(using: str, execution: TaskExecution, names: list[str],
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
    sql = cache.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        meta = TaskExecution._meta
        assert meta.pk is not None and meta.pk.column is not None and meta.db_table
        where = [f"{quote(meta.pk.column)} = %s"]
        for field in _fields(list(expect)):
            if field.get_internal_type() == "JSONField":
                # As Django's own JSON exact lookup compares: jsonb = jsonb, JSON(a) = JSON(b).
                where.append(f"{quote(field.column)} = %s" if connection.vendor == "postgresql"
                             else f"JSON({quote(field.column)}) = JSON(%s)")
            else:
                where.append(f"{quote(field.column)} = %s")
        sets = ", ".join(f"{quote(str(field.column))} = %s" for field in _fields(names))
        sql = cache[key] = (f"UPDATE {quote(meta.db_table)} SET {sets} "
                            f"WHERE {' AND '.join(where)}")
    params = [field.get_db_prep_save(getattr(execution, field.attname), connection)
              for field in _fields(names)]
    params.append(execution.pk)
    params.extend(field.get_db_prep_save(value, connection)
                  for field, value in zip(_fields(list(expect)), expect.values(), strict=True))
    _pre_save(execution, using, names)
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        changed = cursor.rowcount
    if changed:
        _post_save(execution, using, names, created=False)
    return changed


def _update_with_orm(using: str, execution: TaskExecution, names: list[str],
                     expect: dict[str, Any] | None) -> int:
    if not expect:
        execution.save(using=using, update_fields=names)
        return 1
    changed = TaskExecution.objects.using(using).filter(pk=execution.pk, **expect).update(
        **{name: getattr(execution, name) for name in names})
    if changed:
        _post_save(execution, using, names, created=False)
    return changed


def insert_run(using: str, execution: TaskExecution) -> None:
    """INSERT a new run (as ``execution.save(using=using)``) and set its primary key."""
    connection = connections[using]
    if connection.vendor not in VENDORS or not connection.features.can_return_columns_from_insert:
        execution.save(using=using)
        return
    cache = _cache(using)
    assert cache is not None
    meta = TaskExecution._meta
    assert meta.pk is not None and meta.pk.column is not None
    fields = [field for field in meta.concrete_fields if field is not meta.pk]
    sql = cache.get("insert")
    if sql is None:
        quote = connection.ops.quote_name
        sql = cache["insert"] = (
            f"INSERT INTO {quote(meta.db_table)} "
            f"({', '.join(quote(str(field.column)) for field in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(meta.pk.column)}")
    _pre_save(execution, using, None)
    params = [field.get_db_prep_save(field.pre_save(execution, True), connection)
              for field in fields]
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        execution.pk = cursor.fetchone()[0]
    execution._state.adding = False
    execution._state.db = using
    _post_save(execution, using, None, created=True)


def _pre_save(execution: TaskExecution, using: str, names: list[str] | None) -> None:
    if signals.pre_save.has_listeners(TaskExecution):
        signals.pre_save.send(sender=TaskExecution, instance=execution, raw=False, using=using,
                              update_fields=frozenset(names) if names else None)


def _post_save(execution: TaskExecution, using: str, names: list[str] | None,
               created: bool) -> None:
    if signals.post_save.has_listeners(TaskExecution):
        signals.post_save.send(sender=TaskExecution, instance=execution, created=created,
                               update_fields=frozenset(names) if names else None, raw=False,
                               using=using)
