"""Noticing that health changed: the last known health, the signal, the log and the mail.

The last known health is a row in the database (models.HealthState), not a cache entry:
Django's default cache is per process, and a Cloud Run service runs several processes on
several instances, each of which would announce the same change. Every check reads the row
(one query); a check whose health differs from it writes the new health with a conditional
update on the row's ``version``, and only the writer that wins announces the change, so it is
announced once however many instances notice it at the same moment.

Health changes when the site turns healthy or unhealthy, or when the set of reasons changes
(a reason is its kind and task: the numbers in it change on every check and are not a
change). A change is noticed when something checks: GET /tasks/health/ (an uptime check) or
``manage.py tasks_health``.
"""

import logging
from typing import Any

from django.core.mail import mail_admins
from django.db import IntegrityError, router, transaction
from django.dispatch import Signal

from .conf import tasks_settings
from .health import HealthReport, health_report
from .models import HealthState

logger = logging.getLogger("gyrinx_tasks")

# Sent once per change, with sender=HealthState and the keyword arguments ``report`` (a
# health.HealthReport), ``healthy``, ``reasons`` (the reasons' dicts), ``previous_healthy``
# and ``previous_reasons`` (the keys, "kind:task", of the reasons before).
health_changed = Signal()

SITE = 1  # the one row's primary key


def check_health(now: Any = None) -> HealthReport:
    """The health report now, with a change announced if it is one."""
    report = health_report(now)
    record_health(report)
    return report


def _keys(reasons: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{reason.get('kind')}:{reason.get('task')}" for reason in reasons})


def last_known_health() -> dict[str, Any] | None:
    """The row's version, health and reasons, or None before the site was ever unhealthy."""
    row = HealthState.objects.filter(pk=SITE).values("version", "healthy", "reasons").first()
    return dict(row) if row is not None else None


_UNREAD: Any = object()


def record_health(report: HealthReport, last: Any = _UNREAD) -> bool:
    """Remember ``report``'s health if it differs from the last known one (``last``, as read
    by last_known_health(); read now by default) and announce the change; whether this call
    did (another process may have won the same change)."""
    row = last_known_health() if last is _UNREAD else last
    before_healthy, before = (row["healthy"], _keys(row["reasons"])) if row else (True, [])
    if report.healthy == before_healthy and report.keys == before:
        return False
    reasons = [reason.as_dict() for reason in report.reasons]
    values = {"healthy": report.healthy, "reasons": reasons, "changed_at": report.checked_at}
    if row is None:
        try:
            with transaction.atomic(using=router.db_for_write(HealthState)):
                HealthState.objects.create(pk=SITE, version=1, **values)
        except IntegrityError:
            return False  # another process recorded a first health meanwhile
    elif not HealthState.objects.filter(pk=SITE, version=row["version"]).update(
            version=row["version"] + 1, **values):
        return False  # another process recorded this (or another) change first
    announce(report, before_healthy, before)
    return True


def describe(report: HealthReport) -> str:
    if report.healthy:
        return "Task health changed: healthy again."
    lines = [f"Task health changed: unhealthy ({len(report.reasons)} "
             f"reason{'s' if len(report.reasons) != 1 else ''})."]
    lines += [f"- {reason.kind} {reason.task or '(site)'}: {reason.detail}"
              for reason in report.reasons]
    return "\n".join(lines)


def announce(report: HealthReport, previous_healthy: bool, previous_reasons: list[str]) -> None:
    """The signal, an ERROR record (which Cloud Logging alerting can page on) and, with
    TASKS_HEALTH_MAIL_ADMINS, a mail to ADMINS. A receiver or mail that fails is logged, never
    raised: the check that noticed the change must still answer."""
    text = describe(report)
    logger.error(text)
    for receiver, result in health_changed.send_robust(
            sender=HealthState, report=report, healthy=report.healthy,
            reasons=[reason.as_dict() for reason in report.reasons],
            previous_healthy=previous_healthy, previous_reasons=previous_reasons):
        if isinstance(result, Exception):
            logger.error("A health_changed receiver (%r) failed", receiver, exc_info=result)
    if tasks_settings.TASKS_HEALTH_MAIL_ADMINS:
        subject = ("Task health: healthy again" if report.healthy else
                   f"Task health: unhealthy ({len(report.reasons)} reasons)")
        try:
            mail_admins(subject, text)
        except Exception:
            logger.exception("Could not mail ADMINS about the change of task health")
