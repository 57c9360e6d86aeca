from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [*good_routes_except("add"), TaskRoute(jobs.add, min_retry_delay=60, max_retry_delay=30)]
