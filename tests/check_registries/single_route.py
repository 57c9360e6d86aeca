from gyrinx_tasks import TaskRoute
from tests import tasks as jobs

tasks = TaskRoute(jobs.add)  # not wrapped in a list
