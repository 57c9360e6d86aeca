"""Database expressions over a run's stored errors, shared by the models' indexes and the admin.

Imports no model: the migrations refer to these classes by path.
"""

from typing import Any

from django.db.models import CharField, F, Func
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
