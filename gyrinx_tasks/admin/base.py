"""Shared admin behaviour: actions that refuse, with a 403, users who may not run them."""

from django.contrib import admin
from django.contrib.admin.options import ActionLocation
from django.core.exceptions import PermissionDenied


class ActionPermissionMixin(admin.ModelAdmin):
    """Answer 403 when a user posts an action their permissions do not allow.

    Django drops such actions from the form and then either answers "No action selected"
    or, when the user may run no action at all, ignores the POST and shows the list. Both
    hide a forged or stale request. Each action also re-checks its permission itself.
    """

    def check_action_permission(self, request, location=ActionLocation.CHANGE_LIST) -> None:
        # Actions on the change form post their choice under a prefixed name.
        key = "action" if location == ActionLocation.CHANGE_LIST else f"{location.value}-action"
        names = request.POST.getlist(key)
        if not names:
            return
        allowed = self.get_actions(request, action_location=location)
        known = {action.name for action in self._get_base_actions(location)}
        if any(name in known and name not in allowed for name in names):
            raise PermissionDenied

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            self.check_action_permission(request)
        return super().changelist_view(request, extra_context)

    def response_action(self, request, queryset, action_location=ActionLocation.CHANGE_LIST):
        self.check_action_permission(request, action_location)
        return super().response_action(request, queryset, action_location=action_location)
