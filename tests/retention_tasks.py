"""Tasks and a registry with their own retention (TASKS_REGISTRY = "tests.retention_tasks"),
for tests/test_retention.py. The @task(retention=...) option needs Django 6.1: only the tests
marked django61 import this module."""

from datetime import timedelta

from django.tasks import task

from gyrinx_tasks import TaskRoute
from gyrinx_tasks.maintenance import roll_up_and_prune
from tests import tasks as test_tasks


@task(retention=timedelta(days=90))
def kept_long() -> None:
    pass


@task(retention=timedelta(days=90))
def route_wins() -> None:
    pass


tasks = [
    TaskRoute(test_tasks.add),
    TaskRoute(test_tasks.echo, retention=timedelta(days=2)),
    TaskRoute(kept_long),
    TaskRoute(route_wins, retention=timedelta(days=5)),
    TaskRoute(roll_up_and_prune, schedule="17 * * * *"),
]
