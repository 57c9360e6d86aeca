from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "explode", "flaky"),
    TaskRoute(jobs.add, schedule="0 3 * * *", schedule_tolerance=0),
    TaskRoute(jobs.echo, schedule="0 3 * * *", schedule_tolerance="600"),  # type: ignore[arg-type]
    TaskRoute(jobs.explode, schedule="0 3 * * *", schedule_tolerance=True),
    TaskRoute(jobs.flaky, schedule="0 3 * * *", schedule_tolerance=900),  # fine
]
