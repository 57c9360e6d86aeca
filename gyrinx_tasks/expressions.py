"""Database expressions shared by the models' indexes, the admin, the overview and the rollups:
over a run's stored errors, and the bucket a timestamp falls in.

Imports no model: the migrations refer to these classes by path.
"""

from typing import Any

from django.db.models import CharField, F, Func, IntegerField
from django.db.models.fields.json import KT

# The last stored error's exception class path, e.g. "builtins.RuntimeError" (or NULL).
LAST_ERROR_CLASS_PATH = "errors__-1__exception_class_path"


def last_error_class() -> Any:
    """The last error's exception class path, computed in the database (NULL without errors)."""
    return KT(LAST_ERROR_CLASS_PATH)


class LastErrorClassName(Func):
    """The last error's exception class without its module, lower-cased: "runtimeerror".

    What the run list's search compares a typed class name with, through the index of the
    same expression (gyrinx_exec_error_class). Written as literal SQL per database, without
    parameters, so that the query's expression is the index's, word for word, and the planner
    matches them.
    """

    output_field = CharField()
    template = ("lower(regexp_replace(((%(expressions)s -> -1) ->> 'exception_class_path'), "
                "'^.*[.]', ''))")

    def __init__(self, **extra: Any) -> None:
        super().__init__(F("errors"), **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # No regexp_replace in SQLite: strip the trailing run of non-dot characters to find
        # the module prefix ("builtins."), then remove that prefix.
        path = "json_extract(%(expressions)s, '$[#-1].exception_class_path')"
        template = f"lower(replace({path}, rtrim({path}, replace({path}, '.', '')), ''))"
        return self.as_sql(compiler, connection, template=template, **extra)


class BucketIndex(Func):
    """Which chart bucket a timestamp falls in: floor((t - since) / size) in whole seconds.

    ``since`` and ``size`` are integers we compute, inlined so the expression groups cleanly.
    """

    output_field = IntegerField()

    def __init__(self, expression: Any, since: int, size: int) -> None:
        super().__init__(expression, since=int(since), size=int(size))

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # date_part is float8 (cheaper per row than EXTRACT's numeric) and exact enough here:
        # at today's epoch its resolution is under a microsecond.
        template = "FLOOR((date_part('epoch', %(expressions)s) - %(since)s) / %(size)s)::int"
        return self.as_sql(compiler, connection, template=template, **extra)

    def as_sql(self, compiler: Any, connection: Any, function: Any = None,
               template: Any = None, arg_joiner: Any = None, **extra: Any) -> Any:
        if template is None:
            # SQLite: strftime('%s') of the stored text cut to whole seconds (SQLite would
            # round .999999 up into the next second). The doubled %% survive both Func's
            # formatting and the backend's own parameter substitution.
            template = ("((CAST(strftime('%%%%s', substr(%(expressions)s, 1, 19)) AS INTEGER)"
                        " - %(since)s) / %(size)s)")
        return super().as_sql(compiler, connection, function, template, arg_joiner, **extra)
