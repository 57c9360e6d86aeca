"""The Cloud Scheduler fake, driven through the real google-cloud-scheduler client."""

from datetime import UTC, datetime

import pytest
from google.api_core import exceptions
from google.cloud import scheduler_v1
from google.protobuf import field_mask_pb2

pytestmark = pytest.mark.clock

pytest_plugins = ["tests.fakes.scheduler"]

Job = scheduler_v1.Job
PARENT = "projects/test-project/locations/europe-west2"
TOPIC = "projects/test-project/topics/test--gyrinx.tasks--tests.tasks.add"


def job_spec(sf, job_id="nightly", **overrides):
    spec = {
        "name": f"{sf.parent}/jobs/{job_id}",
        "description": "Nightly cleanup",
        "schedule": "0 3 * * *",
        "time_zone": "Europe/London",
        "pubsub_target": {"topic_name": TOPIC, "data": b'{"task_id": "scheduled-x"}'},
    }
    spec.update(overrides)
    return spec


def test_create_then_get_round_trip(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf, state=Job.State.PAUSED))

    # Output-only fields come from the service, not the request.
    assert created.state == Job.State.ENABLED
    assert created.schedule_time > datetime.now(UTC)
    assert created.user_update_time <= datetime.now(UTC)
    fetched = sf.client.get_job(name=created.name)
    assert fetched == created
    assert fetched.pubsub_target.data == b'{"task_id": "scheduled-x"}'
    assert [method for method, _ in sf.fake.calls] == ["CreateJob", "GetJob"]
    assert sf.fake.calls[0][1].job.schedule == "0 3 * * *"


def test_create_without_name_gets_one_under_parent(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf, name=""))
    assert created.name.startswith(f"{sf.parent}/jobs/")


def test_list_pages_through_every_job_in_the_location(scheduler_fake):
    sf = scheduler_fake
    for i in range(7):
        sf.client.create_job(parent=sf.parent, job=job_spec(sf, f"job-{i}"))
    sf.fake.seed(
        Job(job_spec(sf, "elsewhere", name="projects/test-project/locations/us-east1/jobs/x"))
    )

    pager = sf.client.list_jobs(request={"parent": sf.parent, "page_size": 3})
    names = [job.name for job in pager]

    assert names == [f"{sf.parent}/jobs/job-{i}" for i in range(7)]
    list_calls = [request for method, request in sf.fake.calls if method == "ListJobs"]
    assert [bool(request.page_token) for request in list_calls] == [False, True, True]


def test_seeded_jobs_are_visible(scheduler_fake):
    sf = scheduler_fake
    seeded = sf.fake.seed(Job(job_spec(sf, "unmanaged")), state=Job.State.PAUSED)
    assert sf.client.get_job(name=seeded.name).state == Job.State.PAUSED
    assert [job.name for job in sf.client.list_jobs(parent=sf.parent)] == [seeded.name]


def test_update_with_mask_changes_only_masked_fields(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    changed = job_spec(sf, schedule="30 4 * * 1", description="ignored, not in the mask")

    updated = sf.client.update_job(
        job=changed, update_mask=field_mask_pb2.FieldMask(paths=["schedule"])
    )

    assert updated.schedule == "30 4 * * 1"
    assert updated.description == "Nightly cleanup"
    assert updated.user_update_time >= created.user_update_time
    assert sf.client.get_job(name=created.name).schedule == "30 4 * * 1"


def test_update_without_mask_replaces_settable_fields_and_keeps_state(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    sf.client.pause_job(name=created.name)

    updated = sf.client.update_job(job=job_spec(sf, description="", time_zone="UTC"))

    assert updated.description == ""
    assert updated.time_zone == "UTC"
    assert updated.state == Job.State.PAUSED


def test_update_that_leaves_an_invalid_job_fails(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    with pytest.raises(exceptions.InvalidArgument, match="unix-cron"):
        sf.client.update_job(
            job={"name": created.name, "schedule": "every day"},
            update_mask=field_mask_pb2.FieldMask(paths=["schedule"]),
        )
    assert sf.client.get_job(name=created.name).schedule == "0 3 * * *"


def test_delete_removes_the_job(scheduler_fake):
    sf = scheduler_fake
    created = sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    sf.client.delete_job(name=created.name)
    assert sf.fake.jobs == {}
    with pytest.raises(exceptions.NotFound):
        sf.client.get_job(name=created.name)


def test_pause_and_resume_set_state_and_refuse_the_wrong_state(scheduler_fake):
    sf = scheduler_fake
    name = sf.client.create_job(parent=sf.parent, job=job_spec(sf)).name

    assert sf.client.pause_job(name=name).state == Job.State.PAUSED
    with pytest.raises(exceptions.FailedPrecondition, match="must be ENABLED"):
        sf.client.pause_job(name=name)
    assert sf.client.resume_job(name=name).state == Job.State.ENABLED
    with pytest.raises(exceptions.FailedPrecondition, match="must be PAUSED"):
        sf.client.resume_job(name=name)


def test_run_records_the_run_and_calls_on_run(scheduler_fake):
    sf = scheduler_fake
    name = sf.client.create_job(parent=sf.parent, job=job_spec(sf)).name
    delivered = []
    # The callback may call back into the fake, as a publish-on-run hook might.
    sf.fake.on_run = lambda job: delivered.append(
        sf.client.get_job(name=job.name).pubsub_target.data
    )

    ran = sf.client.run_job(name=name)

    assert ran.last_attempt_time <= datetime.now(UTC)
    assert sf.fake.runs == [name]
    assert delivered == [b'{"task_id": "scheduled-x"}']


def test_a_failing_on_run_callback_surfaces_as_an_error(scheduler_fake):
    sf = scheduler_fake
    name = sf.client.create_job(parent=sf.parent, job=job_spec(sf)).name
    sf.fake.on_run = lambda job: 1 / 0
    with pytest.raises(exceptions.InternalServerError, match="ZeroDivisionError"):
        sf.client.run_job(name=name)


BAD_CREATES = {
    "bad parent": ("projects/test-project/europe-west2", {}, "must look like projects/"),
    "job name with dots": (None, {"name": f"{PARENT}/jobs/a.b"}, "may contain only letters"),
    "name not under parent": (
        None,
        {"name": "projects/test-project/locations/us-east1/jobs/nightly"},
        "is not under parent",
    ),
    "missing schedule": (None, {"schedule": ""}, "schedule is required"),
    "invalid cron": (None, {"schedule": "0 25 * * *"}, "unix-cron"),
    "cron with seconds": (None, {"schedule": "0 0 3 * * *"}, "unix-cron"),
    "unknown timezone": (None, {"time_zone": "Mars/Olympus"}, "tz database"),
    "topic without project": (
        None,
        {"pubsub_target": {"topic_name": "my-topic", "data": b"x"}},
        "must look like projects/PROJECT_ID/topics/",
    ),
    "topic id with digit first": (
        None,
        {"pubsub_target": {"topic_name": "projects/test-project/topics/1abc", "data": b"x"}},
        "must start with a letter",
    ),
    "topic in another project": (
        None,
        {"pubsub_target": {"topic_name": "projects/other/topics/abc", "data": b"x"}},
        "same project",
    ),
    "empty pubsub message": (None, {"pubsub_target": {"topic_name": TOPIC}}, "non-empty data"),
    "no target": (None, {"pubsub_target": None}, "exactly one target"),
    "too many retries": (None, {"retry_config": {"retry_count": 6}}, "0 to 5"),
    "negative backoff": (
        None,
        {"retry_config": {"min_backoff_duration": {"seconds": -1}}},
        "must not be negative",
    ),
}


@pytest.mark.parametrize("parent, overrides, message", BAD_CREATES.values(), ids=BAD_CREATES)
def test_wrong_create_requests_fail(scheduler_fake, parent, overrides, message):
    sf = scheduler_fake
    job = job_spec(sf, **overrides)
    if job["pubsub_target"] is None:
        del job["pubsub_target"]
    with pytest.raises(exceptions.InvalidArgument, match=message):
        sf.client.create_job(parent=parent or sf.parent, job=job)
    assert sf.fake.jobs == {}


def test_duplicate_create_is_already_exists(scheduler_fake):
    sf = scheduler_fake
    sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    with pytest.raises(exceptions.AlreadyExists):
        sf.client.create_job(parent=sf.parent, job=job_spec(sf))


@pytest.mark.parametrize("method", ["get_job", "delete_job", "run_job", "pause_job"])
def test_missing_job_is_not_found(scheduler_fake, method):
    sf = scheduler_fake
    with pytest.raises(exceptions.NotFound):
        getattr(sf.client, method)(name=f"{sf.parent}/jobs/missing")


@pytest.mark.parametrize("path", ["scheduleTime", "state", "name", "no_such_field"])
def test_bad_update_mask_path_is_invalid_argument(scheduler_fake, path):
    sf = scheduler_fake
    sf.client.create_job(parent=sf.parent, job=job_spec(sf))
    with pytest.raises(exceptions.InvalidArgument, match=f"Invalid mask for Job: {path}"):
        sf.client.update_job(job=job_spec(sf), update_mask=field_mask_pb2.FieldMask(paths=[path]))
