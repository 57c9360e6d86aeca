"""Kill switches: a page of every task in the registry, each on unless someone switches it off.

Off has two modes (``SwitchMode``): *skip* acknowledges deliveries and records them SKIPPED;
*hold* answers the push endpoint with 429 so that Pub/Sub keeps the messages until the
switch is on again. Rows exist only for tasks someone has switched; a task without a row is
on. The page lists the registry, not the table, so nobody has to add rows to see the state.
"""

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.db import router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_htmx.http import HttpResponseClientRefresh

from ..exceptions import RegistryError, UnknownTask
from ..killswitch import turn_off, turn_on
from ..models import KillSwitch, SwitchMode
from ..registry import get_route, get_routes
from ..routes import TaskRoute
from .base import AuditedAdmin, HtmxHttpRequest, audit, page_context, require

# Pub/Sub keeps an unacknowledged message this long after it was published. Provisioning
# does not set message_retention_duration on the subscriptions, so this is Pub/Sub's default.
MESSAGE_RETENTION = timedelta(days=7)

PAGE_TEMPLATE = "admin/gyrinx_tasks/killswitch/page.html"
ROW_TEMPLATE = "admin/gyrinx_tasks/killswitch/_row.html"
SUMMARY_TEMPLATE = "admin/gyrinx_tasks/killswitch/_summary.html"


def registry_task_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted({route.name for route in get_routes()})]


class TurnOffForm(forms.Form):
    """What the inline "Turn off" form asks for: why, and what deliveries do meanwhile."""

    reason = forms.CharField(
        label=_("Reason"), max_length=500, strip=True,
        error_messages={"required": _("Give a reason, for whoever looks next.")},
    )
    mode = forms.ChoiceField(
        label=_("While off"), choices=SwitchMode.choices, initial=SwitchMode.SKIP,
        widget=forms.RadioSelect,
        error_messages={"required": _("Choose skip or hold."),
                        "invalid_choice": _("Choose skip or hold.")},
    )


@dataclass
class SwitchRow:
    """One task on the page: its route (None for an orphan switch) and its switch, if any."""

    name: str
    route: TaskRoute | None
    switch: KillSwitch | None
    form: TurnOffForm | None = None  # a submitted form with errors, shown open
    now: datetime = field(default_factory=timezone.now)

    @property
    def dom_id(self) -> str:
        return f"killswitch-{self.name}" if self.route else f"killswitch-orphan-{self.switch_pk}"

    @property
    def switch_pk(self) -> int | None:
        return self.switch.pk if self.switch else None

    @property
    def db_off(self) -> bool:
        return bool(self.switch and not self.switch.enabled)

    @property
    def mode(self) -> str:
        return self.switch.mode if self.switch and self.db_off else ""

    @property
    def env_var(self) -> str:
        return (self.route.enabled_env_var or "") if self.route else ""

    @property
    def env_value(self) -> str | None:
        return os.environ.get(self.env_var) if self.env_var else None

    @property
    def env_off(self) -> bool:
        return bool(self.route and not self.route.env_switch_enabled())

    @property
    def state(self) -> str:
        """What deliveries do now: "env" (skipped by the environment), "skip", "hold", "on"."""
        if self.env_off:
            return "env"
        if self.db_off:
            return "hold" if self.mode == SwitchMode.HOLD else "skip"
        return "on"

    @property
    def held_since(self) -> datetime | None:
        if self.state != "hold" or self.switch is None:
            return None
        return self.switch.off_since or self.switch.updated_at

    @property
    def dropped_from(self) -> datetime | None:
        """From when Pub/Sub's retention starts dropping messages that were held."""
        since = self.held_since
        return since + MESSAGE_RETENTION if since else None

    @property
    def dropping(self) -> bool:
        dropped_from = self.dropped_from
        return bool(dropped_from and dropped_from <= self.now)

    @property
    def unqueued_backend(self) -> str:
        """The alias of the route's backend if it has no queue the switch could act on.

        Only deliveries through PubSubBackend's push endpoint ask the switch. Another backend
        (Django's ImmediateBackend, say) runs the task inside ``.enqueue()``; the switch then
        stops only scheduled firings and admin retries.
        """
        return unqueued_backend(self.route) if self.route else ""

    @property
    def retention_days(self) -> int:
        return MESSAGE_RETENTION.days

    @property
    def off_form(self) -> TurnOffForm:
        return self.form or TurnOffForm(auto_id=f"id_%s_{self.name}")


def unqueued_backend(route: TaskRoute) -> str:
    from ..backend import PubSubBackend

    try:
        backend = route.task.get_backend()
    except Exception:  # an unknown alias: the system checks report it; the page must open
        return ""
    return "" if isinstance(backend, PubSubBackend) else backend.alias


def build_rows(routes: tuple[TaskRoute, ...], switches: dict[str, KillSwitch]
               ) -> tuple[list[SwitchRow], list[SwitchRow]]:
    """Rows for the registry's tasks (sorted by name), and for switches of tasks it lacks."""
    now = timezone.now()
    registered = {route.name: route for route in routes}
    rows = [SwitchRow(name, registered[name], switches.get(name), now=now)
            for name in sorted(registered)]
    orphans = [SwitchRow(name, None, switch, now=now)
               for name, switch in sorted(switches.items()) if name not in registered]
    return rows, orphans


def switches_task(switch: KillSwitch) -> bool:
    """Whether ``switch`` keeps a registered task off, so that deleting it turns the task on.

    While the registry cannot be loaded every switch that is off counts: failing closed.
    """
    if switch.enabled:
        return False
    try:
        return any(route.name == switch.task_name for route in get_routes())
    except RegistryError:
        return True


class KillSwitchForm(forms.ModelForm):
    """Django's add and change forms (reached from the history and "Recent actions")."""

    task_name = forms.ChoiceField(
        label=_("Task name"), choices=(), help_text=_("A task listed in TASKS_REGISTRY."))

    class Meta:
        model = KillSwitch
        fields = ("task_name", "enabled", "mode", "reason")
        help_texts = {
            "enabled": _("Untick to switch the task off."),
            "reason": _("Why it is off, for whoever looks next. Required when off."),
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
        task_field = self.fields["task_name"]
        assert isinstance(task_field, forms.ChoiceField)
        task_field.choices = [("", "---------"), *choices]
        self.fields["mode"].required = False  # skip unless chosen, as on the page

    def clean_mode(self) -> str:
        return self.cleaned_data.get("mode") or SwitchMode.SKIP

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("enabled") and not (cleaned.get("reason") or "").strip():
            self.add_error("reason", _("Give a reason when switching a task off."))
        return cleaned


class KillSwitchAdmin(AuditedAdmin):
    form = KillSwitchForm
    readonly_fields = ("updated_by", "updated_at", "off_since")
    actions = None  # the page below replaces the changelist and its actions

    class Media:
        css = {"all": ["gyrinx_tasks/admin.css"]}

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("switch/<str:task_name>/off/", wrap(self.turn_off_view),
                 name=f"{prefix}_turn_off"),
            path("switch/<str:task_name>/on/", wrap(self.turn_on_view),
                 name=f"{prefix}_turn_on"),
            *super().get_urls(),
        ]

    # Django's add, change and delete views reach the same rows as the page, so they need the
    # same permission to change what deliveries do: add_killswitch or delete_killswitch alone
    # must not switch a task off or back on around change_killswitch.

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A new switch may be off: adding one is switching the task.
        return super().has_add_permission(request) and self.has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        if obj is not None and switches_task(obj):
            return self.has_change_permission(request)  # deleting it turns the task on
        return True  # an orphan switch, or one that is on: deleting it changes nothing

    def delete_model(self, request: HttpRequest, obj: KillSwitch) -> None:
        # Checked again under a lock: the switch may have been turned off since the
        # confirmation page was shown. PermissionDenied rolls back Django's LogEntry too.
        with transaction.atomic(using=router.db_for_write(KillSwitch)):
            current = KillSwitch.objects.select_for_update().filter(pk=obj.pk).first()
            if current is None:
                return
            require(self.has_delete_permission(request, current))
            current.delete()

    # Django's add/change forms: record who changed the switch and when it went off.

    def save_model(self, request, obj, form, change):
        obj.updated_by = request.user.get_username()
        if obj.enabled:
            obj.off_since = None
        elif obj.off_since is None or {"enabled", "mode"} & set(form.changed_data):
            obj.off_since = timezone.now()
        super().save_model(request, obj, form, change)

    # The page.

    def changelist_view(self, request, extra_context=None):
        require(self.has_view_permission(request))
        if request.htmx and request.GET.get("fragment") == "summary":
            return self.render_page(request, template=SUMMARY_TEMPLATE)
        return self.render_page(request)

    def render_page(self, request: HttpRequest, failed: SwitchRow | None = None,
                    status: int = 200, template: str = PAGE_TEMPLATE) -> TemplateResponse:
        switches = {switch.task_name: switch for switch in KillSwitch.objects.all()}
        registry_error = ""
        try:
            routes = get_routes()
        except RegistryError as exc:
            registry_error, routes = str(exc), ()
        rows, orphans = build_rows(routes, switches)
        if failed is not None:
            rows = [failed if row.name == failed.name else row for row in rows]
        counts = {state: sum(1 for row in rows if row.state == state)
                  for state in ("on", "skip", "hold", "env")}
        unqueued: dict[str, list[str]] = {}
        for row in rows:
            if row.unqueued_backend:
                unqueued.setdefault(row.unqueued_backend, []).append(row.name)
        context = page_context(
            self, request, str(_("Kill switches")),
            rows=rows, orphans=orphans, registry_error=registry_error, counts=counts,
            unqueued=sorted(unqueued.items()),
            retention_days=MESSAGE_RETENTION.days, **self.permissions(request),
        )
        return TemplateResponse(request, template, context, status=status)

    def permissions(self, request: HttpRequest) -> dict[str, bool]:
        return {"can_change": self.has_change_permission(request),
                "can_delete": self.has_delete_permission(request)}

    def render_row(self, request: HttpRequest, row: SwitchRow) -> TemplateResponse:
        return TemplateResponse(request, ROW_TEMPLATE,
                                {"row": row, "opts": self.opts, **self.permissions(request)})

    def _route(self, request: HtmxHttpRequest, task_name: str) -> TaskRoute | HttpResponse:
        """The registry's route for ``task_name``, or a response that says why there is none."""
        try:
            return get_route(task_name)
        except (UnknownTask, RegistryError) as exc:
            self.message_user(request, f"{exc} Nothing was changed.", messages.ERROR)
        if request.htmx:
            return HttpResponseClientRefresh()  # the row is stale: show the page anew
        return redirect(self._page_url())

    def _page_url(self) -> str:
        return reverse(f"{self.admin_site.name}:{self.opts.app_label}_"
                       f"{self.opts.model_name}_changelist")

    def _done(self, request: HtmxHttpRequest, route: TaskRoute, switch: KillSwitch | None,
              change: str, said: str) -> HttpResponse:
        """Audit a change, then answer the row (HTMX) or go back to the page with a message."""
        if change:
            assert switch is not None
            audit(request, switch, change)
        if request.htmx:
            response = self.render_row(request, SwitchRow(route.name, route, switch))
            if change:
                response["HX-Trigger"] = "killswitch-changed"  # the counts reload themselves
            return response
        if change:
            self.message_user(request, said, messages.SUCCESS)
        else:
            self.message_user(request, f"Nothing changed: {route.name} was already so.",
                              messages.WARNING)
        return redirect(self._page_url())

    def response_delete(self, request, obj_display, obj_id):
        # Django sends users without the change permission to the admin index; the page is
        # where they came from and can still see.
        response = super().response_delete(request, obj_display, obj_id)
        if response.status_code == 302 and self.has_view_permission(request):
            return redirect(self._page_url())
        return response

    def turn_off_view(self, request: HtmxHttpRequest, task_name: str) -> HttpResponse:
        require(self.has_change_permission(request))
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        route = self._route(request, task_name)
        if isinstance(route, HttpResponse):
            return route
        form = TurnOffForm(request.POST, auto_id=f"id_%s_{route.name}")
        if not form.is_valid():
            switch = KillSwitch.objects.filter(task_name=route.name).first()
            row = SwitchRow(route.name, route, switch, form=form)
            if request.htmx:
                return self.render_row(request, row)  # 200, so htmx swaps the errors in
            return self.render_page(request, failed=row, status=400)
        reason, mode = form.cleaned_data["reason"], form.cleaned_data["mode"]
        switch, change = turn_off(route.name, reason, mode, request.user.get_username())
        said = f"Turned off {route.name} ({SwitchMode(mode).name.lower()}): {reason}"
        return self._done(request, route, switch, change, said)

    def turn_on_view(self, request: HtmxHttpRequest, task_name: str) -> HttpResponse:
        require(self.has_change_permission(request))
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        route = self._route(request, task_name)
        if isinstance(route, HttpResponse):
            return route
        switch, change = turn_on(route.name, request.user.get_username())
        return self._done(request, route, switch, change, f"Turned on {route.name}.")
