"""A home page with a button per task, so a person can try the whole path."""

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskException
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from gyrinx_tasks.exceptions import UnknownTask
from gyrinx_tasks.models import KillSwitch, TaskExecution
from gyrinx_tasks.registry import get_routes

from .samples import enqueue_sample


def home(request):
    switches = dict(KillSwitch.objects.values_list("task_name", "enabled"))
    routes = [
        {
            "route": route,
            "switch_on": switches.get(route.name, True),
            "env_on": route.env_switch_enabled(),
        }
        for route in get_routes()
    ]
    recent = TaskExecution.objects.only(
        "result_id", "task_name", "status", "trigger", "attempts", "created_at"
    )[:10]
    return render(request, "sample_site/home.html", {
        "routes": routes,
        "recent": recent,
        "backend": type(task_backends["default"]).__name__,
        "emulator_host": getattr(settings, "PUBSUB_EMULATOR_HOST", ""),
    })


@require_POST
def enqueue(request, name):
    try:
        result = enqueue_sample(name, request.user)
    except UnknownTask as exc:
        raise Http404(str(exc)) from exc
    except (TaskException, ValueError) as exc:
        messages.error(request, f"Could not enqueue {name}: {exc}")
        return redirect("home")
    level = messages.ERROR if result.status == TaskResultStatus.FAILED else messages.SUCCESS
    link = reverse("admin:gyrinx_tasks_taskexecution_changelist") + f"?q={result.id}"
    messages.add_message(request, level, format_html(
        'Enqueued {} as <a href="{}">{}</a> ({}).', name, link, result.id, result.status
    ))
    return redirect("home")
