"""Finding runs by what staff type: a task's name or path, an exception class, or an id.

Every kind of term is answered through an index, so the search stays fast at millions of
runs: task names and paths are matched against the registry (a handful of routes) and become
``task_name IN (...)`` on the (task_name, created_at) index; exception classes go through the
index of the last error's class name (``gyrinx_exec_error_class``); ids are matched exactly on
their unique or plain indexes. Nothing is matched with LIKE over the table.
"""

import re

from django.db.models import Q
from django.utils.text import smart_split, unescape_string_literal

from .exceptions import RegistryError
from .expressions import LAST_ERROR_CLASS_PATH, LastErrorClassName
from .registry import get_routes

# A Python name, or a dotted path of them: a task name, or an exception class.
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def terms(search: str) -> list[str]:
    """The words of ``search``; "quoted phrases" stay whole, as in Django's admin search."""
    words = []
    for word in smart_split(search):
        if word[:1] in "\"'" and word[-1:] == word[:1]:
            word = unescape_string_literal(word)
        if word.strip():
            words.append(word.strip())
    return words


def matching_task_names(term: str) -> list[str]:
    """Registry tasks whose name or path contains ``term``, ignoring case."""
    needle = term.lower()
    try:
        routes = get_routes()
    except RegistryError:
        return []
    return sorted({route.name for route in routes
                   if needle in route.name.lower() or needle in route.path.lower()})


def term_filter(term: str) -> Q:
    """Runs one search word finds.

    - Registry tasks whose name or path contains it: their runs, and nothing else (a task
      name is no id or exception class; one condition keeps the index scan in order).
    - A Python name or dotted path ("RuntimeError", "requests.exceptions.ConnectionError"):
      runs whose last error is of that class (the name after the last dot, any case; with a
      dot, the whole path must match as well), or runs of a task of exactly that name that
      is not in the registry (renamed or removed).
    - Otherwise, and also beside a class: an exact result id, message task id or Pub/Sub
      message id.
    """
    names = matching_task_names(term)
    if names:
        return Q(task_name__in=names)
    by_id = Q(result_id=term) | Q(task_id=term) | Q(message_id=term)
    if _DOTTED_NAME.match(term):
        by_class = Q(error_class_name=term.rsplit(".", 1)[-1].lower())
        if "." in term:
            by_class &= Q(**{LAST_ERROR_CLASS_PATH: term})
        return by_class | Q(task_name=term) | by_id
    return by_id


def search(queryset, search_term: str):
    """``queryset`` narrowed to the runs every word of ``search_term`` finds."""
    words = terms(search_term)
    if not words:
        return queryset
    if any(_DOTTED_NAME.match(word) and not matching_task_names(word) for word in words):
        queryset = queryset.alias(error_class_name=LastErrorClassName())
    for word in words:
        queryset = queryset.filter(term_filter(word))
    return queryset
