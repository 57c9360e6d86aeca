"""Backlog per route: what waits in each push subscription, read from Cloud Monitoring.

Pub/Sub writes two metrics per subscription once a minute: how many messages are not yet
acknowledged (``num_undelivered_messages``) and the age of the oldest of them
(``oldest_unacked_message_age``). Our runs table cannot know either: a message counts only once
it reaches the push endpoint. The admin shows both per route, read here with bounded calls and
kept in Django's cache for TASKS_BACKLOG_CACHE_SECONDS. When they cannot be read (the emulator
keeps no metrics, no permission, no answer in time) ``Backlog.unavailable`` says why in a
sentence, and the pages show that instead.
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import cache

from . import clients
from .conf import tasks_settings
from .routes import topic_name_for

logger = logging.getLogger("gyrinx_tasks")

UNDELIVERED = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST_AGE = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
# Both reads together give up after this many seconds, retries included.
TIMEOUT = 4.0
# Pub/Sub samples each subscription every 60 s and a sample can take up to 4 minutes to be
# readable; the newest point of the last 10 minutes is the backlog "now".
LOOKBACK = timedelta(minutes=10)
PAGE_SIZE = 1000
CACHE_KEY = "gyrinx_tasks:backlog:v1:{project}:{prefix}"
NOT_AVAILABLE = "backlog not available: "
ROLE = "roles/monitoring.viewer"


@dataclass(frozen=True)
class SubscriptionBacklog:
    """The newest samples of one subscription (None: no sample in the last 10 minutes)."""

    undelivered: int | None = None
    oldest_age: int | None = None  # seconds
    measured_at: datetime | None = None


@dataclass(frozen=True)
class Backlog:
    """Samples per subscription id, or, when they could not be read, why not."""

    subscriptions: dict[str, SubscriptionBacklog] = field(default_factory=dict)
    unavailable: str = ""  # "backlog not available: ..." when nothing could be read
    read_at: datetime | None = None

    @property
    def available(self) -> bool:
        return not self.unavailable

    def for_subscription(self, subscription_id: str) -> SubscriptionBacklog:
        return self.subscriptions.get(subscription_id, SubscriptionBacklog())


def subscription_prefix() -> str:
    """What every push subscription of this environment's routes starts with."""
    return topic_name_for("")


def unavailable(reason: str) -> Backlog:
    return Backlog(unavailable=NOT_AVAILABLE + reason, read_at=datetime.now(UTC))


def read_backlog(use_cache: bool = True) -> Backlog:
    """The backlog of this environment's push subscriptions, cached briefly.

    Never raises for a failed read: the answer's ``unavailable`` says what went wrong (and the
    log has the error itself). A failure is cached too, so a page left open on a project
    without permission does not ask Cloud Monitoring every few seconds.
    """
    if tasks_settings.emulator_host:
        return unavailable(
            "the Pub/Sub emulator (PUBSUB_EMULATOR_HOST) keeps no Cloud Monitoring metrics."
        )
    from .provisioning.config import default_project

    project = default_project()
    if not project:
        return unavailable(
            "GCP_PROJECT_ID is not set, so there is no project to read the metrics of."
        )
    key = CACHE_KEY.format(project=project, prefix=subscription_prefix())
    if use_cache:
        cached = cache.get(key)
        if isinstance(cached, Backlog):
            return cached
    backlog = _read(project)
    cache.set(key, backlog, tasks_settings.TASKS_BACKLOG_CACHE_SECONDS)
    return backlog


def _read(project: str) -> Backlog:
    from google.api_core import exceptions

    try:
        client = clients.monitoring_client()
    except Exception as exc:  # noqa: BLE001 - no credentials, or a broken install
        logger.warning("Building the Cloud Monitoring client failed: %s", exc)
        return unavailable(_failure(exc))
    deadline = time.monotonic() + TIMEOUT
    try:
        undelivered = _latest(client, project, UNDELIVERED, deadline)
        oldest = _latest(client, project, OLDEST_AGE, deadline)
    except (exceptions.GoogleAPIError, TimeoutError) as exc:
        logger.warning("Reading the backlog from Cloud Monitoring failed: %s", exc)
        return unavailable(_failure(exc))
    except Exception as exc:  # never a 500 on a status page; the log has the traceback
        logger.exception("Reading the backlog from Cloud Monitoring failed")
        return unavailable(_failure(exc))
    finally:
        transport = getattr(client, "transport", None)
        if transport is not None:
            transport.close()
    subscriptions = {
        name: SubscriptionBacklog(
            undelivered=undelivered.get(name, (None, None))[0],
            oldest_age=oldest.get(name, (None, None))[0],
            measured_at=max(
                (
                    at
                    for _, at in (
                        undelivered.get(name, (None, None)),
                        oldest.get(name, (None, None)),
                    )
                    if at
                ),
                default=None,
            ),
        )
        for name in sorted(set(undelivered) | set(oldest))
    }
    return Backlog(subscriptions=subscriptions, read_at=datetime.now(UTC))


def metric_filter(metric: str, prefix: str) -> str:
    """The Monitoring filter for one metric of the subscriptions named ``prefix...``."""
    return (
        f'metric.type = "{metric}" AND resource.type = "pubsub_subscription" '
        f'AND resource.labels.subscription_id = starts_with("{prefix}")'
    )


def _latest(
    client: Any, project: str, metric: str, deadline: float
) -> dict[str, tuple[int, datetime]]:
    """The newest point of ``metric`` per subscription id: (value, when it was sampled)."""
    from google.api_core import retry as retries
    from google.cloud import monitoring_v3

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Cloud Monitoring did not answer within {TIMEOUT:g} s.")
    now = datetime.now(UTC)
    request = monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{project}",
        filter=metric_filter(metric, subscription_prefix()),
        interval=monitoring_v3.TimeInterval(start_time=now - LOOKBACK, end_time=now),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        page_size=PAGE_SIZE,
    )
    retry = retries.Retry(
        predicate=retries.if_transient_error, initial=0.2, maximum=1.0, multiplier=2.0, timeout=left
    )
    newest: dict[str, tuple[int, datetime]] = {}
    for series in client.list_time_series(request=request, retry=retry, timeout=left):
        name = series.resource.labels.get("subscription_id", "")
        for point in series.points:
            # A plain datetime: proto-plus gives its own subclass, which the cache pickles.
            at = datetime.fromtimestamp(point.interval.end_time.timestamp(), UTC)
            if name and (name not in newest or at > newest[name][1]):
                newest[name] = (int(point.value.int64_value), at)
        if time.monotonic() > deadline:  # later pages are fetched as the loop asks
            raise TimeoutError(f"Cloud Monitoring did not answer within {TIMEOUT:g} s.")
    return newest


def _failure(exc: BaseException) -> str:
    """Why the backlog could not be read, in a sentence that quotes nothing from the error."""
    from google.api_core import exceptions

    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(
        isinstance(
            c,
            (
                exceptions.PermissionDenied,
                exceptions.Forbidden,
                exceptions.Unauthenticated,
                exceptions.Unauthorized,
            ),
        )
        for c in causes
    ):
        return (
            f"Cloud Monitoring refused this service's credentials; grant its service "
            f"account {ROLE} on the project."
        )
    if any(
        isinstance(
            c,
            (
                exceptions.RetryError,
                exceptions.DeadlineExceeded,
                exceptions.ServiceUnavailable,
                TimeoutError,
            ),
        )
        for c in causes
    ):
        return f"Cloud Monitoring did not answer within {TIMEOUT:g} s; the page tries again."
    if any(type(c).__module__.startswith("google.auth") for c in causes):
        return "no usable Google credentials were found for this service."
    return f"reading Cloud Monitoring failed ({type(exc).__name__}); the server log has the error."


def format_age(seconds: int | None) -> str:
    """An age at a glance: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
