"""Shared admin behaviour: actions that refuse, with a 403, users who may not run them."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied


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
