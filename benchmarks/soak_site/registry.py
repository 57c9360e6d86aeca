from gyrinx_tasks import TaskRoute

from . import tasks as soak_tasks

# Short backoff so the planned failures come back within seconds; the 10 s ack deadline is
# Pub/Sub's minimum, and also how long a run cut off by the killed worker stays "busy".
tasks = [TaskRoute(soak_tasks.soak_step, ack_deadline=10, min_retry_delay=1, max_retry_delay=5)]
