"""Changelist filters whose choices are fixed or come from the registry, never from the table.

Django's field filters ask the database for the distinct values in a column, which means a
scan of the whole table at millions of runs; these filters know their choices up front.
"""

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from ..exceptions import RegistryError
from ..health import StuckKind, stuck_filter
from ..models import ShownStatus, Trigger
from ..registry import get_routes


class _ExactValueFilter(admin.SimpleListFilter):
    field_name = ""

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})


class StatusFilter(admin.SimpleListFilter):
    """The run's state as staff see it (models.ShownStatus): "Failing, will retry" for a failed
    attempt Pub/Sub delivers again, "Failed" only for runs that failed for good."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return ShownStatus.choices

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value not in ShownStatus.values:
            return queryset.none()  # as an exact match on an unknown state would
        return queryset.shown_status(value)


class TriggerFilter(_ExactValueFilter):
    title = _("trigger")
    parameter_name = field_name = "trigger"

    def lookups(self, request, model_admin):
        return Trigger.choices


class TaskNameFilter(_ExactValueFilter):
    title = _("task")
    parameter_name = field_name = "task_name"

    def lookups(self, request, model_admin):
        try:
            names = sorted({route.name for route in get_routes()})
        except RegistryError:
            # The registry's own system check reports why; the run list must still open.
            return []
        return [(name, name) for name in names]


class RecoveryFilter(admin.SimpleListFilter):
    """Failed and rejected runs by whether a retry has made them good (models.py)."""

    title = _("recovery")
    parameter_name = "recovery"

    def lookups(self, request, model_admin):
        return [("pending", _("Not yet recovered")), ("recovered", _("Recovered by a retry"))]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.not_recovered()
        if self.value() == "recovered":
            return queryset.recovered()
        return queryset


class StuckFilter(admin.SimpleListFilter):
    """Stuck runs, of one kind or any (gyrinx_tasks/health.py defines them); the overview's
    stuck count links here."""

    title = _("stuck runs")
    parameter_name = "stuck"
    ANY = "any"

    def lookups(self, request, model_admin):
        return [(self.ANY, _("Any kind")),
                *((kind.value, capfirst(kind.label)) for kind in StuckKind)]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(stuck_filter(None if value == self.ANY else value))
        except ValueError as exc:  # not a kind: Django shows the list unfiltered, with ?e=1
            raise IncorrectLookupParameters(exc) from exc
