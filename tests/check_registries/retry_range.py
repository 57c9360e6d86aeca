from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo"),
    TaskRoute(jobs.add, min_retry_delay=-1),
    TaskRoute(jobs.echo, max_retry_delay=601),
]
