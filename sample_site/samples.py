"""Example arguments for each sample task, shared by the home page and ``sample_setup``."""

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.tasks import TaskResult

from gyrinx_tasks.registry import get_route


def sample_kwargs(name: str, user: Any = None) -> dict[str, Any]:
    """Keyword arguments that make a sensible run of the named task."""
    if name == "send_welcome_email":
        if user is None or not getattr(user, "pk", None):
            user = get_user_model().objects.order_by("pk").first()
        if user is None:
            raise ValueError(
                "send_welcome_email needs a user; run `manage.py sample_setup` to create one."
            )
        return {"user_id": user.pk}
    if name == "generate_report":
        return {"report_id": f"rpt-{uuid.uuid4().hex[:8]}", "rows": 20_000}
    if name == "flaky_sync":
        return {"source": "crm"}
    if name == "cleanup_old_data":
        return {"days": 30}
    return {}


def enqueue_sample(name: str, user: Any = None) -> TaskResult:
    """Enqueue the registry's task ``name`` with sample arguments (UnknownTask if absent)."""
    route = get_route(name)
    return route.task.enqueue(**sample_kwargs(name, user))
