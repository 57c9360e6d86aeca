from gyrinx_tasks import TaskRoute
from tests.check_registries import GOOD_ROUTES, unrouted_tasks

tasks = [*GOOD_ROUTES, TaskRoute(unrouted_tasks.routed_job)]
