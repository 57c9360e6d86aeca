from django.db import migrations


class Migration(migrations.Migration):
    """The permission to see the payload of redacted routes' runs (TaskRoute(redact=True))."""

    dependencies = [
        ("gyrinx_tasks", "0004_attempt_history_caps_and_give_up"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="taskexecution",
            options={
                "ordering": ["-created_at", "-id"],
                "permissions": [
                    ("retry_taskexecution", "Can retry task executions"),
                    ("export_taskexecution", "Can export task executions"),
                    ("view_payload_taskexecution",
                     "Can see arguments and results of redacted tasks"),
                ],
                "verbose_name": "task execution",
                "verbose_name_plural": "task executions",
            },
        ),
    ]
