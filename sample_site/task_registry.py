"""The sample site's task registry: every task that may travel through Pub/Sub."""

from gyrinx_tasks import TaskRoute
from sample_site.tasks import (
    backfill_statistics,
    cleanup_old_data,
    flaky_sync,
    generate_report,
    send_welcome_email,
)

tasks = [
    TaskRoute(send_welcome_email),
    TaskRoute(generate_report, ack_deadline=600, min_retry_delay=30),
    TaskRoute(flaky_sync, min_retry_delay=10, max_retry_delay=60),
    TaskRoute(cleanup_old_data, schedule="0 3 * * *", schedule_timezone="Europe/London"),
    TaskRoute(
        backfill_statistics,
        schedule="*/5 * * * *",
        schedule_timezone="Europe/London",
        enabled_env_var="ENABLE_BACKFILL_SCHEDULER",
    ),
]
