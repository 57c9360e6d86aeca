from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "explode", "flaky"),
    TaskRoute(jobs.add, health_failure_rate=1.5, health_max_ready_age=0),
    TaskRoute(jobs.echo, health_failure_rate="half",  # type: ignore[arg-type]
              health_max_ready_age=90.5),  # type: ignore[arg-type]
    TaskRoute(jobs.explode, health_failure_rate=True),  # type: ignore[arg-type]
    TaskRoute(jobs.flaky, health_failure_rate=0, health_max_ready_age=60),  # fine
]
