"""Admin pages for task runs and kill switches."""

from django.contrib import admin

from ..models import (
    DeadLetter,
    KillSwitch,
    Overview,
    ProvisioningStatus,
    ScheduledJob,
    TaskExecution,
)
from .deadletters import DeadLetterAdmin
from .executions import TaskExecutionAdmin
from .killswitches import KillSwitchAdmin
from .overview import OverviewAdmin
from .provisioning import ProvisioningStatusAdmin
from .schedules import ScheduledJobAdmin

admin.site.register(TaskExecution, TaskExecutionAdmin)
admin.site.register(KillSwitch, KillSwitchAdmin)
admin.site.register(Overview, OverviewAdmin)
admin.site.register(ProvisioningStatus, ProvisioningStatusAdmin)
admin.site.register(ScheduledJob, ScheduledJobAdmin)
admin.site.register(DeadLetter, DeadLetterAdmin)

__all__ = [
    "DeadLetterAdmin",
    "KillSwitchAdmin",
    "OverviewAdmin",
    "ProvisioningStatusAdmin",
    "ScheduledJobAdmin",
    "TaskExecutionAdmin",
]
