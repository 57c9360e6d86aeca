"""Shared admin behaviour: permission-checked actions, custom pages, and the audit log."""

import json
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request that went through django-htmx's middleware, as its docs type it.

    Check ``gyrinx_tasks.E016`` makes sure the middleware is installed, so every admin view
    can read ``request.htmx`` (true for a request htmx made).
    """

    htmx: HtmxDetails


class ActionPermissionMixin(admin.ModelAdmin):
    """Answer 403 when a user posts a changelist action their permissions do not allow.

    Django drops such actions from the form and then either answers "No action selected"
    or, when the user may run no action at all, ignores the POST and shows the list. Both
    hide a forged or stale request. Each action also re-checks its permission itself.
    Works on Django 6.0 and 6.1 (6.1's change-form actions are not used here).
    """

    def check_action_permission(self, request) -> None:
        names = request.POST.getlist("action")
        if not names:
            return
        allowed = self.get_actions(request)
        known = {name for name, _ in self.admin_site.actions} | {
            action if isinstance(action, str) else action.__name__ for action in self.actions or ()
        }
        if any(name in known and name not in allowed for name in names):
            raise PermissionDenied

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            self.check_action_permission(request)
        return super().changelist_view(request, extra_context)


class PageAdmin(admin.ModelAdmin):
    """The admin of a proxy model that is only a page: nobody adds, changes or deletes rows.

    Its view permission decides whether the page shows in the app index and may be opened;
    its own actions check their permissions in their views.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def has_model_permission(request: HttpRequest, opts: Any, codename: str) -> bool:
    """Whether the user holds ``app_label.codename`` (always checked on the server)."""
    user = request.user
    return bool(user.is_active and user.has_perm(f"{opts.app_label}.{codename}"))


def require(allowed: bool) -> None:
    """Permission first, then work: raise PermissionDenied (a 403) unless ``allowed``."""
    if not allowed:
        raise PermissionDenied


def page_context(model_admin: admin.ModelAdmin, request: HttpRequest, title: str,
                 **extra: Any) -> dict[str, Any]:
    """Context for a custom page that extends admin/gyrinx_tasks/page.html.

    each_context() gives the nav sidebar, dark mode toggle and site header, as on
    Django's own pages.
    """
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
        **extra,
    }


# --- The audit log ------------------------------------------------------------------------
# Every admin LogEntry of this package is written here: audit() for one action, audit_many()
# for a bulk action, reword_audit() to finish an entry written before the work was done, and
# AuditedAdmin for Django's own add, change and delete views. They share _entry(), so who,
# which content type, which object and its name are recorded the same way whoever writes.


def _entry(request: HttpRequest, model: Any, object_id: Any, object_repr: str, message: Any,
           action_flag: int) -> LogEntry:
    """An unsaved LogEntry: ``request.user`` did ``action_flag`` to one object of ``model``."""
    # Admin views only run for logged-in staff (admin_site.admin_view); anonymous is a bug.
    if not request.user.is_authenticated:
        raise PermissionDenied
    if isinstance(message, list):  # Django's structured change messages, stored as JSON
        message = json.dumps(message)
    # The proxy model's own content type, so an action on a page (e.g. a scheduled job) is
    # listed under that page rather than under the model it stands on.
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    object_id = str(object_id if object_id is not None else "")
    return LogEntry(
        user_id=request.user.pk,
        content_type=content_type,
        object_id=object_id or None,
        object_repr=str(object_repr)[:200],
        action_flag=action_flag,
        change_message=message,
    )


def audit(request: HttpRequest, obj: Any, message: Any, action_flag: int = CHANGE,
          model: Any = None) -> LogEntry:
    """Write one admin LogEntry for an action on ``obj`` (who, what, on which object).

    ``model`` names the content type when ``obj`` is not a model instance (e.g. an action
    on a registry route, logged against the page's proxy model with the route's name).
    """
    entry = _entry(request, type(obj) if model is None else model, getattr(obj, "pk", None),
                   str(obj), message, action_flag)
    entry.save()
    return entry


def audit_many(request: HttpRequest, model: Any,
               items: Iterable[tuple[Any, str, Any]], action_flag: int = CHANGE) -> list[LogEntry]:
    """Write one LogEntry per ``(object id, object name, message)`` in one INSERT.

    For bulk actions, whose objects may be known by id and name only (the runs a bulk retry
    retried are not loaded again to be logged).
    """
    entries = [_entry(request, model, object_id, object_repr, message, action_flag)
               for object_id, object_repr, message in items]
    return LogEntry.objects.bulk_create(entries)


def reword_audit(entry: LogEntry, message: str) -> None:
    """Replace the message of an entry written earlier (e.g. once a streamed export ends)."""
    entry.change_message = message
    LogEntry.objects.filter(pk=entry.pk).update(change_message=message)


class AuditedAdmin(admin.ModelAdmin):
    """Django's own add, change and delete views log through the builder above too."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> LogEntry:
        return audit(request, obj, message, ADDITION)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> LogEntry:
        return audit(request, obj, message, CHANGE)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> list[LogEntry]:
        # Called before the rows go, as Django's own is; the entries keep their names.
        objects = list(queryset)
        if not objects:
            return []
        return audit_many(request, type(objects[0]),
                          [(obj.pk, str(obj), "") for obj in objects], DELETION)
