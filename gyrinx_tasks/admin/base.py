"""Shared admin behaviour: permission-checked actions, custom pages, and the audit log."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


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


def audit(request: HttpRequest, obj: Any, message: str, action_flag: int = CHANGE,
          model: Any = None) -> LogEntry:
    """Write one admin LogEntry for an action on ``obj`` (who, what, on which object).

    ``model`` names the content type when ``obj`` is not a model instance (e.g. an action
    on a registry route, logged against the page's proxy model with the route's name).
    """
    if model is None:
        model = type(obj)
    # Admin views only run for logged-in staff (admin_site.admin_view); anonymous is a bug.
    if not request.user.is_authenticated:
        raise PermissionDenied
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    object_id = str(getattr(obj, "pk", "") or "")
    return LogEntry.objects.create(
        user=request.user,
        content_type=content_type,
        object_id=object_id or None,
        object_repr=str(obj)[:200],
        action_flag=action_flag,
        change_message=message,
    )
