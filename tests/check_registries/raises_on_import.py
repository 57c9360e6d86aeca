from gyrinx_tasks import TaskRoute
from tests import tasks as jobs

tasks = [TaskRoute(jobs.no_such_task)]  # AttributeError while the module loads
