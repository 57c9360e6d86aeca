"""Load the routes listed in the module named by TASKS_REGISTRY, and look them up by name."""

import importlib
from functools import lru_cache

from .conf import tasks_settings
from .exceptions import RegistryError, UnknownTask
from .routes import TaskRoute


@lru_cache(maxsize=8)
def _load(module_path: str) -> tuple[TaskRoute, ...]:
    if not module_path:
        raise RegistryError(
            "TASKS_REGISTRY is not set. Set it to the dotted path of the module that holds "
            "`tasks = [TaskRoute(...), ...]`."
        )
    try:
        module = importlib.import_module(module_path)
        tasks = getattr(module, "tasks", None)
        if callable(tasks):  # a function that imports lazily, to avoid circular imports
            tasks = tasks()
    except ImportError as exc:
        raise RegistryError(
            f"TASKS_REGISTRY {module_path!r} cannot be imported: {exc}. "
            "Check the dotted path and that the module imports cleanly."
        ) from exc
    except Exception as exc:
        # Any error of the user's module becomes the one error every caller handles (checks,
        # the admin, the push view, the redaction log filter), rather than escaping from
        # wherever the registry is first read.
        raise RegistryError(
            f"TASKS_REGISTRY {module_path!r} raised {type(exc).__name__} while loading "
            f"({exc}). Fix the error in the registry module (or in a module it imports)."
        ) from exc
    if not isinstance(tasks, (list, tuple)):
        raise RegistryError(
            f"TASKS_REGISTRY module {module_path!r} must define `tasks` as a list of TaskRoute."
        )
    bad = [item for item in tasks if not isinstance(item, TaskRoute)]
    if bad:
        item = bad[0]
        label = getattr(item, "module_path", None) or repr(item)
        raise RegistryError(
            f"TASKS_REGISTRY module {module_path!r} lists {label}, which is not a TaskRoute. "
            "Wrap each task as TaskRoute(task)."
        )
    return tuple(tasks)


def get_routes() -> tuple[TaskRoute, ...]:
    return _load(tasks_settings.TASKS_REGISTRY)


def get_route(name: str) -> TaskRoute:
    for route in get_routes():
        if route.name == name:
            return route
    raise UnknownTask(f"No route in TASKS_REGISTRY is named {name!r}.")


def clear_cache() -> None:
    _load.cache_clear()
