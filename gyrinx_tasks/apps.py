from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GyrinxTasksConfig(AppConfig):
    name = "gyrinx_tasks"
    verbose_name = _("Tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and signal receivers)
        from .startup import maybe_provision_on_startup

        # Opt-in, Cloud Run only, in a background thread: never blocks or breaks start-up.
        maybe_provision_on_startup()
