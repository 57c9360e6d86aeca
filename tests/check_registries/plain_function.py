from gyrinx_tasks import TaskRoute
from tests.check_registries import GOOD_ROUTES


def not_a_task() -> None:  # missing @task
    pass


tasks = [*GOOD_ROUTES, TaskRoute(not_a_task)]
