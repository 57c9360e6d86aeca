"""Tasks that set health thresholds with @task(...) (Django 6.1), and a registry routing them
(TASKS_REGISTRY = "tests.health_task_options"). Imported only by the tests marked django61:
Django 6.0's task() refuses these options."""

from django.tasks import task

from gyrinx_tasks import TaskRoute
from tests import tasks as plain


@task(health_failure_rate=0.9, health_max_ready_age=1800)
def tolerant() -> None:
    pass


@task(health_max_ready_age=1800)
def overridden() -> None:
    pass


tasks = [
    TaskRoute(plain.add),
    TaskRoute(tolerant),
    TaskRoute(overridden, health_max_ready_age=60),  # the route's own wins
]
