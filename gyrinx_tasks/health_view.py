"""GET /tasks/health/: the site's health as JSON, 200 when healthy and 503 when not.

For uptime checks and alerting (docs/cloud-run.md, "Health"). A machine sends
``Authorization: Bearer <TASKS_HEALTH_TOKEN>``; a logged-in staff user may read it in the
browser. Without a token configured, only staff can. The answer names tasks and counts runs;
it never holds a run's arguments, results or errors. Every check also notices a change of
health (health_alerts.py).
"""

import hmac
import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from .conf import tasks_settings
from .health import ReasonKind
from .health_alerts import check_health
from .views import _non_atomic_for_every_alias

logger = logging.getLogger("gyrinx_tasks")


def bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` as its bearer token (compared in
    constant time). Never with no token configured."""
    scheme, _space, credentials = header.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def _allowed(request: HttpRequest) -> bool:
    # The token first: a machine's check then costs no session or user query.
    if bearer_matches(request.headers.get("Authorization", ""),
                      tasks_settings.TASKS_HEALTH_TOKEN):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def _answer(body: dict, status: int) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    if status == 503:
        # The answer, not a server error: Django would log every 503 at ERROR on
        # django.request (and mail ADMINS through its default logging), once per check. A
        # change of health is logged once, by health_alerts. Django's own marker for a
        # response already logged (django.utils.log.log_response); tests/test_health.py
        # fails if it stops working.
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def _failed(kind: ReasonKind, detail: str) -> JsonResponse:
    return _answer({"healthy": False, "checked_at": timezone.now().isoformat(),
                    "reasons": [{"kind": str(kind), "task": "", "detail": detail}]}, 503)


@_non_atomic_for_every_alias
def health(request: HttpRequest) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        response = _answer({"detail": f"The health endpoint answers GET and HEAD, not "
                                      f"{request.method}."}, 405)
        response["Allow"] = "GET, HEAD"
        return response
    try:
        allowed = _allowed(request)
    except ImproperlyConfigured as exc:
        return _failed(ReasonKind.CONFIGURATION, str(exc))
    if not allowed:
        response = _answer({"detail": "Send Authorization: Bearer <TASKS_HEALTH_TOKEN>, or "
                                      "log in to the admin as staff."}, 401)
        response["WWW-Authenticate"] = 'Bearer realm="gyrinx_tasks health"'
        return response
    try:
        report = check_health()
    except ImproperlyConfigured as exc:  # a threshold setting `manage.py check` refuses too
        return _failed(ReasonKind.CONFIGURATION, str(exc))
    except DatabaseError as exc:
        logger.error("The health check could not read the database: %s", exc)
        return _failed(ReasonKind.DATABASE, "The database cannot be read; see the server log.")
    return _answer(report.as_dict(), 200 if report.healthy else 503)
