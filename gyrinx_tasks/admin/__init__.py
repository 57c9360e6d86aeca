"""Admin pages for task runs and kill switches."""

from django.contrib import admin

from ..models import KillSwitch, TaskExecution
from .executions import TaskExecutionAdmin
from .killswitches import KillSwitchAdmin

admin.site.register(TaskExecution, TaskExecutionAdmin)
admin.site.register(KillSwitch, KillSwitchAdmin)

__all__ = ["KillSwitchAdmin", "TaskExecutionAdmin"]
