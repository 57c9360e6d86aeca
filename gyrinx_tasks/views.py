"""The push endpoint: POST /tasks/pubsub/.

Pub/Sub acknowledges a push only on 102, 200, 201, 202 or 204 and redelivers anything else,
so permanent rejections answer 202 (never a plain 400, which would be redelivered for days).
"""

import logging

from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .auth import verify_push_token
from .conf import tasks_settings
from .exceptions import OIDCVerificationError
from .push import MalformedPush, parse_envelope
from .runner import handle_delivery, record_rejection

logger = logging.getLogger("gyrinx_tasks")

STATUS_FOR = {
    "ran": 200,  # ack
    "rejected": 202,  # ack: redelivering a bad message can never help
    "skipped": 202,  # ack: kill switch off
    "duplicate": 202,  # ack: the run already settled
    "busy": 429,  # retry later: another worker is still running this delivery
    "failed": 500,  # retry with backoff
}


def _reply(outcome: str, status: int, detail: str = "", execution=None) -> JsonResponse:
    body = {"outcome": outcome, "detail": detail}
    if execution is not None:
        body.update(result_id=execution.result_id, status=execution.status)
    return JsonResponse(body, status=status)


# Not atomic even under ATOMIC_REQUESTS: the run's states must commit as they happen, and a
# failed task answers 500 without raising, which would otherwise commit half a request.
@transaction.non_atomic_requests
@csrf_exempt
@require_POST
def pubsub_push(request: HttpRequest) -> JsonResponse:
    if tasks_settings.TASKS_VERIFY_OIDC:
        try:
            verify_push_token(request.headers.get("Authorization"))
        except OIDCVerificationError as exc:
            logger.warning("Refused a push request: %s", exc)
            return _reply("forbidden", 403, str(exc))
    raw = request.body.decode("utf-8", errors="replace")
    try:
        try:
            delivery = parse_envelope(request.body)
        except MalformedPush as exc:
            execution = record_rejection(exc.reason, raw, exc=exc)
            return _reply("rejected", 202, exc.reason, execution)
        outcome = handle_delivery(delivery, raw)
    except (OperationalError, InterfaceError) as exc:
        # The database is down or its connections are exhausted: nothing was recorded, so
        # let Pub/Sub redeliver with backoff rather than lose the message.
        logger.error("Database unavailable while handling a push; asking for redelivery: %s",
                     exc)
        return _reply("database_unavailable", 429, "The database is unavailable; retry later.")
    return _reply(outcome.kind, STATUS_FOR[outcome.kind], outcome.detail, outcome.execution)
