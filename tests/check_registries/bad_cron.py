from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "nightly_cleanup"),
    TaskRoute(jobs.add, schedule="0 3 * *"),  # four fields
    TaskRoute(jobs.echo, schedule="@daily"),  # croniter accepts it, Cloud Scheduler does not
    TaskRoute(jobs.nightly_cleanup, schedule="61 * * * *"),  # minute out of range
]
