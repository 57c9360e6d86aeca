from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("nightly_cleanup"),
    TaskRoute(jobs.nightly_cleanup, schedule="0 3 * * *", schedule_timezone="Europe/Londn"),
]
