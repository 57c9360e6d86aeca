"""An in-process gRPC fake of Cloud Scheduler (google.cloud.scheduler.v1.CloudScheduler).

No Scheduler emulator exists, so tests drive the real google-cloud-scheduler client against
this server. It validates requests the way the real API documents, so a wrongly built request
fails here as it would in production. Tests use the `scheduler_fake` fixture:

    from tests.fakes.scheduler import scheduler_fake  # noqa: F401
"""

import base64
import functools
import re
import threading
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from croniter import croniter
from google.auth.credentials import AnonymousCredentials
from google.cloud import scheduler_v1
from google.cloud.scheduler_v1.services.cloud_scheduler.transports import (
    CloudSchedulerGrpcTransport,
)
from google.cloud.scheduler_v1.types import cloudscheduler as cs
from google.protobuf import empty_pb2, field_mask_pb2

from tests.fakes import serve

Job = scheduler_v1.Job
SERVICE = "google.cloud.scheduler.v1.CloudScheduler"
PARENT = "projects/test-project/locations/europe-west2"  # matches tests/settings.py

PARENT_FORMAT = "projects/PROJECT_ID/locations/LOCATION_ID"
PARENT_RE = re.compile(r"projects/[A-Za-z0-9.:-]+/locations/[a-z0-9-]+")
JOB_RE = re.compile(r"(?P<parent>projects/[^/]+/locations/[^/]+)/jobs/(?P<id>[^/]*)")
JOB_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,500}")
TOPIC_RE = re.compile(r"projects/(?P<project>[^/]+)/topics/(?P<id>[^/]*)")
TOPIC_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
OUTPUT_ONLY = ("name", "user_update_time", "state", "status", "schedule_time", "last_attempt_time")
MAX_PAGE_SIZE = 500
JOB_FIELDS = Job.pb().DESCRIPTOR


class Abort(Exception):
    """A gRPC error the fake returns to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> Abort:
    return Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_parent(parent: str) -> None:
    if not PARENT_RE.fullmatch(parent):
        raise invalid(f"Parent {parent!r} must look like {PARENT_FORMAT}.")


def check_job_name(name: str) -> re.Match:
    match = JOB_RE.fullmatch(name)
    if not match or not PARENT_RE.fullmatch(match["parent"]):
        raise invalid(
            f"Job name {name!r} must look like {PARENT_FORMAT}/jobs/JOB_ID, with no extra slashes."
        )
    if not JOB_ID_RE.fullmatch(match["id"]):
        raise invalid(
            f"Job id {match['id']!r} may contain only letters, numbers, hyphens and underscores"
            " (at most 500 characters)."
        )
    return match


def check_schedule(schedule: str, time_zone: str) -> None:
    if not schedule:
        raise invalid("Job.schedule is required; give a unix-cron expression such as '0 3 * * *'.")
    # croniter also accepts 6-field (seconds) and @-macro forms; Scheduler takes unix-cron only.
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise invalid(f"Schedule {schedule!r} is not a valid 5-field unix-cron expression.")
    if time_zone and time_zone.lower() != "utc" and time_zone not in _time_zones():
        raise invalid(f"Time zone {time_zone!r} is not a tz database name such as 'Europe/London'.")


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_pubsub_target(target, job_project: str) -> None:
    match = TOPIC_RE.fullmatch(target.topic_name)
    if not match:
        raise invalid(
            f"Pub/Sub topic {target.topic_name!r} must look like projects/PROJECT_ID/topics/ID."
        )
    topic_id = match["id"]
    if not TOPIC_ID_RE.fullmatch(topic_id) or topic_id.lower().startswith("goog"):
        raise invalid(
            f"Topic id {topic_id!r} must start with a letter, be 3-255 characters of letters,"
            " numbers and - _ . ~ + %, and not start with 'goog'."
        )
    if match["project"] != job_project:
        raise invalid("The Pub/Sub topic must be in the same project as the Cloud Scheduler job.")
    if not target.data and not target.attributes:
        raise invalid("A Pub/Sub target must carry non-empty data or at least one attribute.")


def check_retry_config(retry) -> None:
    if not 0 <= retry.retry_count <= 5:
        raise invalid(f"RetryConfig.retry_count is {retry.retry_count}; it must be 0 to 5.")
    if retry.max_doublings < 0:
        raise invalid("RetryConfig.max_doublings must not be negative.")
    for field in ("max_retry_duration", "min_backoff_duration", "max_backoff_duration"):
        value = getattr(retry, field)
        if value.seconds < 0 or value.nanos < 0:
            raise invalid(f"RetryConfig.{field} must not be negative.")
    low, high = retry.min_backoff_duration.ToTimedelta(), retry.max_backoff_duration.ToTimedelta()
    if retry.HasField("max_backoff_duration") and low > high:
        raise invalid("RetryConfig.min_backoff_duration must not exceed max_backoff_duration.")


def check_job(job) -> None:
    """Validate the user-settable parts of a raw Job message as the real API does."""
    project = check_job_name(job.name)["parent"].split("/")[1]
    if len(job.description) > 500:
        raise invalid("Job.description must not be longer than 500 characters.")
    check_schedule(job.schedule, job.time_zone)
    target = job.WhichOneof("target")
    if target is None:
        raise invalid("A job needs exactly one target: pubsub_target, http_target or app engine.")
    if target == "pubsub_target":
        check_pubsub_target(job.pubsub_target, project)
    elif target == "http_target" and not job.http_target.uri.startswith(("http://", "https://")):
        raise invalid("HttpTarget.uri must be an absolute http:// or https:// URL.")
    if job.HasField("retry_config"):
        check_retry_config(job.retry_config)


def refresh(job) -> None:
    """Set the output-only times the real service keeps up to date."""
    job.user_update_time.GetCurrentTime()
    zone = zoneinfo.ZoneInfo("UTC" if job.time_zone.lower() in ("", "utc") else job.time_zone)
    next_run = croniter(job.schedule, datetime.now(zone)).get_next(datetime)
    job.schedule_time.FromDatetime(next_run.astimezone(UTC))


class FakeCloudScheduler:
    """State and behaviour of the fake service; one instance serves every test in a session."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.jobs: dict[str, Job] = {}  # name -> proto-plus Job, safe to seed directly
        self.calls: list[tuple[str, object]] = []  # (method, proto-plus request)
        self.runs: list[str] = []  # job names, in RunJob order
        self.on_run: Callable[[Job], None] | None = None

    def seed(self, job: Job, state: Job.State = Job.State.ENABLED) -> Job:
        """Store a job as if it already existed in GCP, without validation."""
        job = Job(job, state=state)
        self.jobs[job.name] = job
        return job

    # --- RPC implementations, on raw protobuf messages -------------------------------------

    def _stored(self, name: str):
        check_job_name(name)
        if name not in self.jobs:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"Job {name!r} was not found.")
        return Job.pb(self.jobs[name])

    def _store(self, job):
        self.jobs[job.name] = Job.wrap(job)
        return job

    def create_job(self, request):
        check_parent(request.parent)
        job = Job.pb()()
        job.CopyFrom(request.job)
        for field in OUTPUT_ONLY[1:]:  # the real API ignores output-only input
            job.ClearField(field)
        job.name = job.name or f"{request.parent}/jobs/{uuid.uuid4().hex}"
        check_job(job)
        if check_job_name(job.name)["parent"] != request.parent:
            raise invalid(f"Job name {job.name!r} is not under parent {request.parent!r}.")
        if job.name in self.jobs:
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"Job {job.name!r} already exists.")
        job.state = Job.State.ENABLED
        refresh(job)
        return self._store(job)

    def get_job(self, request):
        return self._stored(request.name)

    def list_jobs(self, request):
        check_parent(request.parent)
        if request.page_size < 0:
            raise invalid("page_size must not be negative.")
        after = ""
        if request.page_token:
            try:
                after = base64.urlsafe_b64decode(request.page_token).decode()
            except ValueError as exc:
                raise invalid("page_token is not one this service returned.") from exc
        names = sorted(
            n for n in self.jobs if n.startswith(f"{request.parent}/jobs/") and n > after
        )
        size = min(request.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        page = names[:size]
        token = base64.urlsafe_b64encode(page[-1].encode()).decode() if names[size:] else ""
        return cs.ListJobsResponse.pb()(
            jobs=[Job.pb(self.jobs[n]) for n in page], next_page_token=token
        )

    def update_job(self, request):
        current = self._stored(request.job.name)
        job = Job.pb()()
        mask = request.update_mask
        if mask.paths:
            for path in mask.paths:
                one = field_mask_pb2.FieldMask(paths=[path])
                if path.split(".")[0] in OUTPUT_ONLY or not one.IsValidForDescriptor(JOB_FIELDS):
                    raise invalid(
                        f"Invalid mask for Job: {path}. Name settable Job fields in snake_case."
                    )
            job.CopyFrom(current)
            mask.MergeMessage(request.job, job, replace_message_field=True)
        else:  # no mask: every settable field is replaced by the request's, as the real API does
            job.CopyFrom(request.job)
            field_mask_pb2.FieldMask(paths=OUTPUT_ONLY).MergeMessage(
                current, job, replace_message_field=True
            )
        check_job(job)
        refresh(job)
        return self._store(job)

    def delete_job(self, request):
        self._stored(request.name)
        del self.jobs[request.name]
        return empty_pb2.Empty()

    def _set_state(self, name: str, want, new):
        job = self._stored(name)
        if job.state != want:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Job {name!r} is {Job.State(job.state).name}; it must be {want.name} first.",
            )
        job.state = new
        return job

    def pause_job(self, request):
        return self._set_state(request.name, Job.State.ENABLED, Job.State.PAUSED)

    def resume_job(self, request):
        return self._set_state(request.name, Job.State.PAUSED, Job.State.ENABLED)

    def run_job(self, request):
        job = self._stored(request.name)
        job.last_attempt_time.GetCurrentTime()
        self.runs.append(job.name)
        return job

    # --- gRPC plumbing ------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "CreateJob": (self.create_job, cs.CreateJobRequest),
            "GetJob": (self.get_job, cs.GetJobRequest),
            "ListJobs": (self.list_jobs, cs.ListJobsRequest),
            "UpdateJob": (self.update_job, cs.UpdateJobRequest),
            "DeleteJob": (self.delete_job, cs.DeleteJobRequest),
            "PauseJob": (self.pause_job, cs.PauseJobRequest),
            "ResumeJob": (self.resume_job, cs.ResumeJobRequest),
            "RunJob": (self.run_job, cs.RunJobRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self._serve(method, impl, request_type),
                    request_deserializer=request_type.pb().FromString,
                    response_serializer=lambda message: message.SerializeToString(),
                )
                for method, (impl, request_type) in methods.items()
            },
        )

    def _serve(self, method: str, impl, request_type):
        def serve(request, context):
            with self._lock:  # the thread pool serves calls concurrently
                self.calls.append((method, request_type.wrap(request)))
                try:
                    result = impl(request)
                except Abort as exc:
                    context.abort(exc.code, exc.message)
                response = type(result)()
                response.CopyFrom(result)  # a snapshot, so later calls cannot race serialising
            # Outside the lock: the callback may call back into this fake.
            if method == "RunJob" and self.on_run is not None:
                try:
                    self.on_run(Job.deserialize(response.SerializeToString()))
                except Exception as exc:
                    context.abort(grpc.StatusCode.INTERNAL, f"The on_run callback failed: {exc!r}")
            return response

        return serve


@dataclass
class SchedulerFake:
    """What the `scheduler_fake` fixture yields."""

    fake: FakeCloudScheduler
    client: scheduler_v1.CloudSchedulerClient
    address: str
    parent: str = PARENT


@functools.cache
def _server() -> tuple[FakeCloudScheduler, str]:
    """Start one server per test session; the fixture resets its state for every test."""
    fake = FakeCloudScheduler()
    return fake, serve(fake.handler(), "Cloud Scheduler")


@pytest.fixture
def scheduler_fake():
    fake, address = _server()
    fake.reset()
    channel = grpc.insecure_channel(address)
    # The channel carries no auth; anonymous credentials keep the client off ADC lookups.
    transport = CloudSchedulerGrpcTransport(channel=channel, credentials=AnonymousCredentials())
    client = scheduler_v1.CloudSchedulerClient(transport=transport)
    yield SchedulerFake(fake=fake, client=client, address=address)
    channel.close()
    fake.reset()
