from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GyrinxTasksConfig(AppConfig):
    name = "gyrinx_tasks"
    verbose_name = _("Tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and signal receivers)
        from .redaction import install_log_filter
        from .startup import maybe_provision_on_startup

        # Opt-in, Cloud Run only, started by the first request (never by a management
        # command), in a background thread: never blocks or breaks start-up.
        maybe_provision_on_startup()
        # Failed tasks of redact=True routes are logged without their exception (personal data).
        install_log_filter()
