"""@task(...) health thresholds that are not valid (Django 6.1 only: 6.0's task() refuses
the options)."""

from django.tasks import task

from gyrinx_tasks import TaskRoute
from tests.check_registries import good_routes_except


@task(health_failure_rate=-0.1, health_max_ready_age="ten minutes")
def badly_tuned() -> None:
    pass


@task(health_failure_rate=1, health_max_ready_age=3600)
def well_tuned() -> None:
    pass


tasks = [*good_routes_except(), TaskRoute(badly_tuned), TaskRoute(well_tuned)]
