"""The overview's count of stuck runs (gyrinx_tasks/health.py), linking to the run list
filtered to them (the "stuck" filter), where each kind's recovery is explained."""

from typing import Any

from django.urls import reverse

from ..health import StuckKind, stuck_runs
from .filters import StuckFilter


def stuck_summary() -> dict[str, Any]:
    """The total and each kind's count, with links to the filtered run list (one query)."""
    stuck = stuck_runs()
    runs_url = reverse("admin:gyrinx_tasks_taskexecution_changelist")
    parameter = StuckFilter.parameter_name
    return {
        "total": stuck.total,
        "url": f"{runs_url}?{parameter}={StuckFilter.ANY}",
        "kinds": [{"kind": str(kind), "label": kind.label, "count": stuck.count(kind),
                   "url": f"{runs_url}?{parameter}={kind}"}
                  for kind in StuckKind if stuck.count(kind)],
    }
