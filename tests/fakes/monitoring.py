"""An in-process gRPC fake of Cloud Monitoring's ListTimeSeries (google.monitoring.v3).

No Monitoring emulator exists, so tests drive the real google-cloud-monitoring client against
this server, as tests/fakes/scheduler.py does for Cloud Scheduler. It checks requests the way
the real API documents (project name, a filter naming exactly one metric type, an interval
whose end is set and not before its start, page tokens it handed out) and answers with the
series whose labels match the filter and the points inside the interval, newest first. Tests
use the `monitoring_fake` fixture:

    pytest_plugins = ["tests.fakes.monitoring"]

``fail_with`` makes every call fail with a gRPC status (PERMISSION_DENIED...), ``delay`` makes
it answer late (for timeouts).
"""

import base64
import functools
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.api import metric_pb2, monitored_resource_pb2
from google.auth.credentials import AnonymousCredentials
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from google.cloud.monitoring_v3.types import metric_service as ms

from tests.fakes import serve

SERVICE = "google.monitoring.v3.MetricService"
PROJECT = "test-project"  # matches tests/settings.py
NAME_RE = re.compile(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]|projects/\d+")
METRIC_RE = re.compile(r'metric\.type\s*=\s*"(?P<type>[^"]+)"')
RESOURCE_RE = re.compile(r'resource\.type\s*=\s*"(?P<type>[^"]+)"')
LABEL_RE = re.compile(
    r'resource\.labels\.(?P<label>\w+)\s*=\s*(?:starts_with\("(?P<prefix>[^"]*)"\)'
    r'|"(?P<value>[^"]*)")'
)
MAX_PAGE_SIZE = 100_000
UNDELIVERED = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST_AGE = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"

TimeSeries = monitoring_v3.TimeSeries


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> Abort:
    return Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def matches(series, filter_text: str) -> bool:
    """Whether a raw TimeSeries matches the filter (metric type, resource type, labels)."""
    metric = METRIC_RE.search(filter_text)
    if metric is None or series.metric.type != metric["type"]:
        return False
    resource = RESOURCE_RE.search(filter_text)
    if resource and series.resource.type != resource["type"]:
        return False
    for label in LABEL_RE.finditer(filter_text):
        value = series.resource.labels.get(label["label"], "")
        if label["prefix"] is not None and not value.startswith(label["prefix"]):
            return False
        if label["value"] is not None and value != label["value"]:
            return False
    return True


class FakeMonitoring:
    """State and behaviour of the fake service; one instance serves every test in a session."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.series: list = []  # raw TimeSeries protobufs
        self.calls: list[ms.ListTimeSeriesRequest] = []
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self.delay = 0.0

    def add_point(
        self,
        metric: str,
        subscription_id: str,
        value: int,
        at: datetime | None = None,
        project: str = PROJECT,
    ) -> None:
        """Record one sample of ``metric`` for a subscription, as Pub/Sub writes them."""
        at = at or datetime.now(UTC)
        with self._lock:
            for series in self.series:
                if (
                    series.metric.type == metric
                    and series.resource.labels["subscription_id"] == subscription_id
                    and series.resource.labels["project_id"] == project
                ):
                    break
            else:
                series = TimeSeries.pb()(
                    metric=metric_pb2.Metric(type=metric),
                    resource=monitored_resource_pb2.MonitoredResource(
                        type="pubsub_subscription",
                        labels={"project_id": project, "subscription_id": subscription_id},
                    ),
                    metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
                    value_type=metric_pb2.MetricDescriptor.ValueType.INT64,
                )
                self.series.append(series)
            point = series.points.add()
            point.value.int64_value = value
            point.interval.end_time.FromDatetime(at)
            # The API answers points newest first.
            ordered = sorted(
                series.points, key=lambda p: p.interval.end_time.ToDatetime(), reverse=True
            )
            del series.points[:]
            series.points.extend(ordered)

    def set_backlog(
        self,
        subscription_id: str,
        undelivered: int,
        oldest_age: int,
        at: datetime | None = None,
        project: str = PROJECT,
    ) -> None:
        """One sample of both backlog metrics for a subscription."""
        self.add_point(UNDELIVERED, subscription_id, undelivered, at, project)
        self.add_point(OLDEST_AGE, subscription_id, oldest_age, at, project)

    # --- the RPC, on raw protobuf messages -------------------------------------------------

    def list_time_series(self, request):
        if not NAME_RE.fullmatch(request.name):
            raise invalid(f"Name {request.name!r} must look like projects/PROJECT_ID_OR_NUMBER.")
        types = METRIC_RE.findall(request.filter)
        if len(types) != 1:
            raise invalid('The filter must name exactly one metric type (metric.type = "...").')
        if not request.interval.HasField("end_time"):
            raise invalid("interval.end_time is required.")
        start = request.interval.start_time.ToDatetime(UTC)
        end = request.interval.end_time.ToDatetime(UTC)
        if request.interval.HasField("start_time") and start > end:
            raise invalid("interval.start_time must not be after interval.end_time.")
        if request.page_size < 0:
            raise invalid("page_size must not be negative.")
        project = request.name.split("/")[1]
        found = []
        for series in self.series:
            if series.resource.labels["project_id"] != project:
                continue
            if not matches(series, request.filter):
                continue
            points = [
                p for p in series.points if start <= p.interval.end_time.ToDatetime(UTC) <= end
            ]
            if not points:
                continue
            answer = TimeSeries.pb()()
            answer.CopyFrom(series)
            del answer.points[:]
            answer.points.extend(points)
            found.append(answer)
        offset = 0
        if request.page_token:
            try:
                offset = int(base64.urlsafe_b64decode(request.page_token).decode())
            except ValueError as exc:
                raise invalid("page_token is not one this service returned.") from exc
        size = min(request.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        page = found[offset : offset + size]
        token = (
            base64.urlsafe_b64encode(str(offset + size).encode()).decode()
            if found[offset + size :]
            else ""
        )
        return ms.ListTimeSeriesResponse.pb()(time_series=page, next_page_token=token)

    # --- gRPC plumbing ------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                    self._serve,
                    request_deserializer=ms.ListTimeSeriesRequest.pb().FromString,
                    response_serializer=lambda message: message.SerializeToString(),
                ),
            },
        )

    def _serve(self, request, context):
        with self._lock:
            self.calls.append(ms.ListTimeSeriesRequest.wrap(request))
            failure, delay = self.fail_with, self.delay
        if delay:
            time.sleep(delay)  # outside the lock: other calls go on meanwhile
        if failure is not None:
            context.abort(*failure)
        with self._lock:
            try:
                response = self.list_time_series(request)
            except Abort as exc:
                context.abort(exc.code, exc.message)
            return response


@dataclass
class MonitoringFake:
    """What the `monitoring_fake` fixture yields."""

    fake: FakeMonitoring
    address: str

    def client(self) -> monitoring_v3.MetricServiceClient:
        """A real client on a channel of its own to the fake (closing it leaves others be)."""
        channel = grpc.insecure_channel(self.address)
        # The channel carries no auth; anonymous credentials keep the client off ADC lookups.
        transport = MetricServiceGrpcTransport(channel=channel, credentials=AnonymousCredentials())
        return monitoring_v3.MetricServiceClient(transport=transport)


@functools.cache
def _server() -> tuple[FakeMonitoring, str]:
    """Start one server per test session; the fixture resets its state for every test."""
    fake = FakeMonitoring()
    return fake, serve(fake.handler(), "Cloud Monitoring")


@pytest.fixture
def monitoring_fake():
    fake, address = _server()
    fake.reset()
    yield MonitoringFake(fake=fake, address=address)
    fake.reset()
