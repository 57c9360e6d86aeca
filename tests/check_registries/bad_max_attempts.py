from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "explode", "flaky"),
    TaskRoute(jobs.add, max_attempts=0),
    TaskRoute(jobs.echo, max_attempts="3"),  # type: ignore[arg-type]
    TaskRoute(jobs.explode, max_attempts=2.5),  # type: ignore[arg-type]
    TaskRoute(jobs.flaky, max_attempts=3),  # fine
]
