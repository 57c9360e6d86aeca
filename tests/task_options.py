"""Tasks declared with PubSubBackend's own @task() options, and a registry routing them
(TASKS_REGISTRY = "tests.task_options"), for tests/test_delivery_life.py (issue 16, item 15).

Imported only by the tests that use it: on a backend whose task_class refuses these options,
importing it raises.
"""

from django.tasks import task

from gyrinx_tasks import TaskRoute
from tests.registry import tasks as GOOD_ROUTES

CALLS: list[int] = []


@task(max_attempts=2)
def fails_twice_at_most() -> None:
    CALLS.append(1)
    raise RuntimeError("always")


@task(retries=3)  # not an option of PubSubBackend: system check gyrinx_tasks.E017
def misspelt_option() -> None:
    pass


tasks = [*GOOD_ROUTES, TaskRoute(fails_twice_at_most), TaskRoute(misspelt_option)]
