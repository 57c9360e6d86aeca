"""Kill switches: turn a task off (deliveries are acknowledged and skipped) without a deploy."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..exceptions import RegistryError, UnknownTask
from ..models import KillSwitch
from ..registry import get_route, get_routes
from .base import ActionPermissionMixin


def registry_task_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted({route.name for route in get_routes()})]


class KillSwitchForm(forms.ModelForm):
    task_name = forms.ChoiceField(
        label=_("Task name"), choices=(), help_text=_("A task listed in TASKS_REGISTRY."))

    class Meta:
        model = KillSwitch
        fields = ("task_name", "enabled", "reason")
        help_texts = {
            "enabled": _("Untick to switch the task off: its deliveries are acknowledged and "
                         "recorded as skipped, and nothing runs."),
            "reason": _("Why it is off, for whoever looks next."),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            choices = registry_task_choices()
        except RegistryError as exc:
            choices = []
            self.fields["task_name"].help_text = str(exc)
        current = self.instance.task_name if self.instance.pk else ""
        if current and current not in dict(choices):
            # A switch for a task that has since left the registry stays editable.
            choices.append((current, _("%(name)s (not in the registry)") % {"name": current}))
        field = self.fields["task_name"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "---------"), *choices]


class KillSwitchAdmin(ActionPermissionMixin, admin.ModelAdmin):
    form = KillSwitchForm
    list_display = ("task_name", "enabled", "reason", "env_switch", "updated_at")
    list_display_links = ("task_name",)
    list_editable = ("enabled", "reason")
    list_filter = ("enabled",)
    search_fields = ("task_name",)
    actions = ("turn_off", "turn_on")

    class Media:
        css = {"all": ["gyrinx_tasks/admin.css"]}

    @admin.display(description=_("environment switch"))
    def env_switch(self, obj):
        try:
            route = get_route(obj.task_name)
        except (UnknownTask, RegistryError):  # nothing to show for it
            return "-"
        if not route.enabled_env_var:
            return "-"
        state = _("on") if route.env_switch_enabled() else _("off")
        return f"{route.enabled_env_var}: {state}"

    @admin.action(description=_("Turn off the selected tasks"), permissions=["change"])
    def turn_off(self, request, queryset):
        self._switch(request, queryset, enabled=False)

    @admin.action(description=_("Turn on the selected tasks"), permissions=["change"])
    def turn_on(self, request, queryset):
        self._switch(request, queryset, enabled=True)

    def _switch(self, request, queryset, enabled: bool) -> None:
        if not self.has_change_permission(request):
            raise PermissionDenied
        message = _("Turned on by an admin action.") if enabled else _(
            "Turned off by an admin action.")
        changed = []
        with transaction.atomic():
            for switch in queryset.select_for_update().filter(enabled=not enabled):
                switch.enabled = enabled
                switch.save(update_fields=["enabled", "updated_at"])
                self.log_change(request, switch, str(message))
                changed.append(switch.task_name)
        if not changed:
            self.message_user(request, _("Nothing changed: the selected tasks were already %s.")
                              % (_("on") if enabled else _("off")), messages.WARNING)
            return
        template = (
            ngettext("Turned on %(count)d task: %(names)s.",
                     "Turned on %(count)d tasks: %(names)s.", len(changed))
            if enabled else
            ngettext("Turned off %(count)d task: %(names)s.",
                     "Turned off %(count)d tasks: %(names)s.", len(changed))
        )
        self.message_user(request, template % {"count": len(changed), "names": ", ".join(changed)},
                          messages.SUCCESS)
