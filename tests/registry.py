from gyrinx_tasks import TaskRoute
from tests import tasks

tasks = [
    TaskRoute(tasks.add),
    TaskRoute(tasks.echo, enabled_env_var="ENABLE_ECHO"),
    TaskRoute(tasks.explode, min_retry_delay=1, max_retry_delay=2),
    TaskRoute(tasks.flaky, min_retry_delay=1, max_retry_delay=2),
    TaskRoute(tasks.report_attempt),
    TaskRoute(tasks.in_transaction),
    TaskRoute(tasks.nightly_cleanup, schedule="0 3 * * *", schedule_timezone="Europe/London"),
]
