from gyrinx_tasks import TaskRoute
from tests.check_registries import GOOD_ROUTES, same_name_tasks

tasks = [*GOOD_ROUTES, TaskRoute(same_name_tasks.add)]
