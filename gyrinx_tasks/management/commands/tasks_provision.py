"""manage.py tasks_provision: make Pub/Sub and Cloud Scheduler match the task registry."""

import json
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError

from gyrinx_tasks.conf import tasks_settings
from gyrinx_tasks.provisioning import (
    Action,
    ProvisioningConfig,
    ProvisioningConfigError,
    ProvisioningError,
    Verb,
    apply_plan,
    build_plan,
    terraform_config,
)


class Command(BaseCommand):
    help = (
        "Create or update the Pub/Sub topics, push subscriptions and Cloud Scheduler jobs that "
        "TASKS_REGISTRY declares, and delete this environment's scheduler jobs that no route "
        "declares. With --dry-run, print the plan and change nothing. With --format "
        "terraform, print the same resources as Terraform JSON and change nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true",
                            help="Print what would change, and change nothing.")
        parser.add_argument(
            "--push-endpoint", metavar="URL",
            help="Push endpoint for the subscriptions. Defaults to CLOUD_RUN_SERVICE_URL + "
                 "/tasks/pubsub/; against the emulator to TASKS_EMULATOR_PUSH_ENDPOINT, else "
                 "a local http:// CLOUD_RUN_SERVICE_URL, else http://127.0.0.1:8000/tasks/pubsub/.",
        )
        parser.add_argument(
            "--format", choices=["text", "terraform"], default="text", dest="output_format",
            help="terraform: print the desired topics, subscriptions and scheduler jobs as "
                 "Terraform JSON (save it as a .tf.json file) instead of provisioning. It "
                 "reads settings and the registry only, so it needs no Google credentials.",
        )

    def handle(self, *args, dry_run, push_endpoint, output_format, **options):
        if output_format == "terraform":
            self._terraform(push_endpoint)
            return
        try:
            config = ProvisioningConfig.from_settings(push_endpoint=push_endpoint)
            self._header(config)
            plan = build_plan(config=config)
        except (ProvisioningConfigError, ProvisioningError) as exc:
            raise CommandError(str(exc)) from exc
        with plan:
            self._show_and_apply(plan, dry_run)

    def _terraform(self, push_endpoint: str | None) -> None:
        try:
            # Terraform provisions Google Cloud, so the production settings apply even
            # when PUBSUB_EMULATOR_HOST is set.
            config = ProvisioningConfig.from_settings(push_endpoint=push_endpoint,
                                                      emulator=False)
        except ProvisioningConfigError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(terraform_config(config), indent=2))

    def _show_and_apply(self, plan, dry_run):
        for line in plan.lines():
            self.stdout.write(self._style_line(line))
        for note in plan.notes:
            self.stdout.write(self.style.NOTICE(note))
        if dry_run:
            self.stdout.write("Dry run: nothing was changed. Run without --dry-run to apply.")
            return
        if not plan.has_changes:
            self.stdout.write(self.style.SUCCESS("Nothing to change."))
            return
        self.stdout.write("Applying:")
        try:
            apply_plan(plan, progress=self._progress)
        except ProvisioningError as exc:
            raise CommandError(str(exc)) from exc
        done = [a for a in plan.actions if a.result]
        self.stdout.write(self.style.SUCCESS(f"Done: {len(done)} change(s) applied."))

    def _header(self, config: ProvisioningConfig) -> None:
        where = (f"the Pub/Sub emulator at {tasks_settings.emulator_host}" if config.emulator
                 else "Google Cloud")
        self.stdout.write(
            f"Provisioning environment {tasks_settings.TASKS_ENVIRONMENT!r} in project "
            f"{config.project!r} on {where}; push endpoint {config.push_endpoint}"
        )

    def _style_line(self, line: str) -> str:
        verb = line.strip().split(" ", 1)[0]
        styles: dict[str, Callable[[str], str]] = {
            Verb.CREATE: self.style.SUCCESS, Verb.UPDATE: self.style.WARNING,
            Verb.DELETE: self.style.ERROR, Verb.ORPHAN: self.style.NOTICE,
            Verb.CONFLICT: self.style.ERROR,
        }
        return styles.get(verb, str)(line)

    def _progress(self, action: Action) -> None:
        if action.error:
            self.stdout.write(self.style.ERROR(
                f"  {action.kind} {action.short_name}: FAILED: {action.error}"))
        else:
            self.stdout.write(f"  {action.kind} {action.short_name}: {action.result}")
