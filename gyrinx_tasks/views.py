"""The push endpoint: POST /tasks/pubsub/.

Pub/Sub acknowledges a push only on 102, 200, 201, 202 or 204 and redelivers anything else,
so permanent rejections are acknowledged (never a plain 400, which would be redelivered for
days). They answer 200, not 202: the official Pub/Sub emulator, unlike the service, treats 202
as a failure and redelivers it (tests/test_e2e.py shows it), and 200 is acknowledged
by both. The JSON body's "outcome" says what happened.
"""

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .auth import verify_push_token
from .claim import record_rejection
from .conf import tasks_settings
from .exceptions import OIDCVerificationError
from .outcomes import OutcomeKind
from .push import (
    BodyTooLarge,
    LengthRequired,
    MalformedPush,
    parse_envelope,
    read_body,
    safe_raw,
)
from .runner import handle_delivery

logger = logging.getLogger("gyrinx_tasks")

# The acknowledging status for deliveries that settle without running. Keep it 200: the
# emulator redelivers a 202 (see the module docstring).
ACK = 200

STATUS_FOR: dict[OutcomeKind, int] = {
    OutcomeKind.RAN: 200,  # ack
    OutcomeKind.REJECTED: ACK,  # ack: redelivering a bad message can never help
    OutcomeKind.SKIPPED: ACK,  # ack: kill switch off
    # Not acknowledged, so Pub/Sub keeps the message and redelivers it with the subscription's
    # backoff until the switch is on. 429, not 503: a deliberate hold is not an outage, so it
    # stays out of 5xx error rates and alerts (docs/admin.md, "Kill switches").
    OutcomeKind.HELD: 429,
    OutcomeKind.DUPLICATE: ACK,  # ack: the run already settled
    OutcomeKind.CANCELLED: ACK,  # ack: staff cancelled the run before it started
    # retry later: another worker is still running this delivery, or its enqueue's
    # transaction is still open
    OutcomeKind.BUSY: 429,
    OutcomeKind.FAILED: 500,  # retry with backoff
    # ack: max_attempts is reached; the run is FAILED for good (gave_up)
    OutcomeKind.GAVE_UP: ACK,
    # Not acknowledged: this attempt outlived its ack deadline and the run was started again;
    # a redelivery is settled by the run's current state (duplicate, busy, or a new attempt).
    OutcomeKind.SUPERSEDED: 409,
    # The task ran but the database refused its outcome: at-least-once, so Pub/Sub redelivers
    # (see docs/delivery.md).
    OutcomeKind.UNRECORDED: 429,
    # Not acknowledged: a chunked body this WSGI server cannot read. Nothing is recorded and
    # Pub/Sub redelivers; acknowledging it as an empty, malformed body would lose the message.
    OutcomeKind.LENGTH_REQUIRED: 411,
}


# Seconds a 429 asks the caller to wait. Pub/Sub uses the subscription's own retry policy;
# the header is for other callers and for people reading the response.
RETRY_AFTER_SECONDS = 10


def _reply(outcome: str, status: int, detail: str = "", execution=None) -> JsonResponse:
    body = {"outcome": outcome, "detail": detail}
    if execution is not None:
        body.update(result_id=execution.result_id, status=execution.status)
    response = JsonResponse(body, status=status)
    if status == 429:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _non_atomic_for_every_alias(view):
    """Django's non_atomic_requests for each database alias, not only the default one.

    Not atomic even under ATOMIC_REQUESTS, whichever alias the runs' table is routed to: the
    run's states must commit as they happen (a task never runs inside a request transaction
    that holds its row's lock), and a failed task answers 500 without raising, which would
    otherwise commit half a request. DATABASES is fixed once settings are loaded.
    """
    for alias in settings.DATABASES:
        view = transaction.non_atomic_requests(using=alias)(view)
    return view


@_non_atomic_for_every_alias
@csrf_exempt
def pubsub_push(request: HttpRequest) -> JsonResponse:
    # Every answer is JSON, including the method check Django's require_POST would do in HTML.
    if request.method != "POST":
        response = _reply("method_not_allowed", 405,
                          f"The push endpoint accepts POST only, not {request.method}.")
        response["Allow"] = "POST"
        return response
    try:
        return _push(request)
    except Exception:
        # A bug of ours, not the task's: answer JSON, and Pub/Sub redelivers the message.
        logger.exception("The push endpoint failed unexpectedly")
        return _reply("error", 500, "The push endpoint failed unexpectedly; see the server log.")


def _push(request: HttpRequest) -> JsonResponse:
    if tasks_settings.TASKS_VERIFY_OIDC:
        try:
            verify_push_token(request.META.get("HTTP_AUTHORIZATION"))
        except OIDCVerificationError as exc:
            logger.warning("Refused a push request: %s", exc)
            return _reply("forbidden", 403, str(exc))
    raw = ""
    try:
        try:
            body = read_body(request, tasks_settings.TASKS_PUSH_MAX_BODY_BYTES)
            raw = safe_raw(body)  # escaped and capped, for a rejection to keep
            delivery = parse_envelope(body)
        except LengthRequired as exc:
            logger.warning("Refused a push request: %s", exc)
            return _reply(OutcomeKind.LENGTH_REQUIRED,
                          STATUS_FOR[OutcomeKind.LENGTH_REQUIRED], exc.reason)
        except MalformedPush as exc:
            if isinstance(exc, BodyTooLarge):
                raw = safe_raw(exc.prefix, exc.size)
            execution = record_rejection(exc.reason, raw, exc=exc)
            return _reply(OutcomeKind.REJECTED, STATUS_FOR[OutcomeKind.REJECTED], exc.reason,
                          execution)
        outcome = handle_delivery(delivery, raw)
    except (OperationalError, InterfaceError) as exc:
        # The database is down or its connections are exhausted: nothing was recorded, so
        # let Pub/Sub redeliver with backoff rather than lose the message.
        logger.error("Database unavailable while handling a push; asking for redelivery: %s",
                     exc)
        return _reply("database_unavailable", 429, "The database is unavailable; retry later.")
    return _reply(outcome.kind, STATUS_FOR[outcome.kind], outcome.detail, outcome.execution)
