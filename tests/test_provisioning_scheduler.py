"""Provisioning's Cloud Scheduler half: the real google-cloud-scheduler client against the
in-process gRPC fake (tests/fakes/scheduler.py), which validates requests as the API does."""

import json
import uuid
from dataclasses import replace

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import scheduler_v1

from gyrinx_tasks.provisioning import (
    FieldChange,
    Kind,
    ProvisioningConfig,
    ProvisioningError,
    Verb,
    apply_plan,
    build_plan,
)
from gyrinx_tasks.registry import get_route, get_routes
from gyrinx_tasks.scheduling.firing import scheduled_message
from gyrinx_tasks.scheduling.jobs import pause_job, resume_job, run_now

pytest_plugins = ["tests.fakes.scheduler"]  # the scheduler_fake fixture

# Production mode, whatever PUBSUB_EMULATOR_HOST says: these tests are about Cloud Scheduler.
CONFIG = ProvisioningConfig(
    project="test-project", location="europe-west2",
    push_endpoint="https://tasks-test.example.run.app/tasks/pubsub/",
    service_account="pubsub-invoker@test-project.iam.gserviceaccount.com",
    audience="https://tasks-test.example.run.app/tasks/pubsub/",
)
PARENT = CONFIG.scheduler_parent


@pytest.fixture(autouse=True)
def env(settings):
    name = f"s{uuid.uuid4().hex[:10]}"
    settings.TASKS_ENVIRONMENT = name
    return name


@pytest.fixture
def nightly():
    return get_route("nightly_cleanup")


def plan_jobs(fake, routes=None):
    return build_plan(scheduler=fake.client, config=CONFIG, routes=routes, parts=["scheduler"])


def job_path(route):
    return f"{PARENT}/jobs/{route.scheduler_job_name}"


def seed(fake, job_id, schedule="0 1 * * *"):
    name = f"{PARENT}/jobs/{job_id}"
    fake.fake.seed(scheduler_v1.Job(
        name=name, schedule=schedule, time_zone="UTC",
        pubsub_target={"topic_name": "projects/test-project/topics/somewhere", "data": b"{}"},
    ))
    return name


def test_creates_one_job_per_scheduled_route_with_the_right_fields(scheduler_fake, nightly):
    plan = plan_jobs(scheduler_fake)
    assert [(a.kind, a.verb, a.name) for a in plan.actions] == [
        (Kind.SCHEDULER_JOB, Verb.CREATE, job_path(nightly))]  # only scheduled routes

    apply_plan(plan)

    job = scheduler_fake.fake.jobs[job_path(nightly)]
    assert nightly.scheduler_job_name.endswith("--gyrinx-scheduler--tests-tasks-nightly_cleanup")
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "Europe/London")
    assert job.pubsub_target.topic_name == f"projects/test-project/topics/{nightly.topic_name}"
    message = json.loads(job.pubsub_target.data)
    assert message == scheduled_message(nightly)
    assert message["task_id"].startswith("scheduled-") and "enqueued_at" not in message
    assert dict(job.pubsub_target.attributes) == {"trigger": "schedule"}
    retry = job.retry_config
    assert retry.retry_count == nightly.schedule_retry_count == 0
    assert retry.min_backoff_duration.total_seconds() == nightly.min_retry_delay
    assert retry.max_backoff_duration.total_seconds() == nightly.max_retry_delay
    assert retry.max_doublings == 5
    assert job.state == scheduler_v1.Job.State.ENABLED
    assert [method for method, _ in scheduler_fake.fake.calls] == ["ListJobs", "CreateJob"]


def test_second_run_is_unchanged(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))
    plan = plan_jobs(scheduler_fake)
    assert [a.verb for a in plan.actions] == [Verb.UNCHANGED]
    assert plan.summary() == "0 to create, 0 to update, 0 to delete, 1 unchanged."
    calls = len(scheduler_fake.fake.calls)
    apply_plan(plan)
    assert len(scheduler_fake.fake.calls) == calls  # nothing to call


def test_schedule_change_updates_only_that_field(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))
    changed = [replace(r, schedule="30 4 * * 1") if r.name == nightly.name else r
               for r in get_routes()]

    plan = plan_jobs(scheduler_fake, routes=changed)
    [update] = plan.actions
    assert update.verb == Verb.UPDATE
    assert update.changes == [FieldChange("schedule", "0 3 * * *", "30 4 * * 1")]
    assert plan.lines()[1].startswith(f"  update     {nightly.scheduler_job_name} (schedule: ")
    assert plan.lines()[1].endswith("(schedule: 0 3 * * * -> 30 4 * * 1)")
    apply_plan(plan)

    method, request = scheduler_fake.fake.calls[-1]
    assert method == "UpdateJob"
    assert list(request.update_mask.paths) == ["schedule"]
    assert scheduler_fake.fake.jobs[job_path(nightly)].schedule == "30 4 * * 1"
    assert [a.verb for a in plan_jobs(scheduler_fake, routes=changed).actions] == [
        Verb.UNCHANGED]


def test_changed_retry_count_is_named_and_masked(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))
    changed = [replace(r, schedule_retry_count=3) if r.name == nightly.name else r
               for r in get_routes()]
    [update] = plan_jobs(scheduler_fake, routes=changed).actions
    assert [str(c) for c in update.changes] == ["retry_config.retry_count: 0 -> 3"]
    assert update.update_mask == ["retry_config"]


def test_a_hand_edited_job_is_put_back(scheduler_fake, nightly):
    seed(scheduler_fake, nightly.scheduler_job_name)  # our name, someone else's settings

    [update] = plan_jobs(scheduler_fake).actions

    changed = {c.field for c in update.changes}
    assert {"description", "schedule", "time_zone", "pubsub_target.topic_name",
            "pubsub_target.data", "pubsub_target.attributes",
            "retry_config.retry_count"} <= changed
    data = next(c for c in update.changes if c.field == "pubsub_target.data")
    assert data.current == "{}" and json.loads(data.desired) == scheduled_message(nightly)
    assert update.update_mask == [
        "description", "pubsub_target", "retry_config", "schedule", "time_zone"]
    apply_plan(plan_jobs(scheduler_fake))
    assert [a.verb for a in plan_jobs(scheduler_fake).actions] == [Verb.UNCHANGED]


def test_orphan_cleanup_touches_only_this_environments_jobs(scheduler_fake, nightly, env):
    orphan = seed(scheduler_fake, f"{env}--gyrinx-scheduler--tests-tasks-retired")
    other_env = seed(scheduler_fake, f"{env}x--gyrinx-scheduler--tests-tasks-retired")
    prod = seed(scheduler_fake, "prod--gyrinx-scheduler--tests-tasks-nightly_cleanup")
    unmanaged = seed(scheduler_fake, "nightly-backup")

    plan = plan_jobs(scheduler_fake)
    verbs = {a.name: a.verb for a in plan.actions}
    assert verbs == {job_path(nightly): Verb.CREATE, orphan: Verb.DELETE}
    apply_plan(plan)

    assert set(scheduler_fake.fake.jobs) == {job_path(nightly), other_env, prod, unmanaged}
    deletes = [r.name for m, r in scheduler_fake.fake.calls if m == "DeleteJob"]
    assert deletes == [orphan]


def test_job_another_instance_created_meanwhile_is_converged(scheduler_fake, nightly):
    plan = plan_jobs(scheduler_fake)  # says: create
    other = replace(nightly, schedule="0 5 * * *")
    apply_plan(plan_jobs(scheduler_fake, routes=[other]))  # the other instance, older registry

    apply_plan(plan)

    [action] = plan.actions
    assert action.result == "already existed; updated schedule: 0 5 * * * -> 0 3 * * *"
    assert scheduler_fake.fake.jobs[job_path(nightly)].schedule == "0 3 * * *"


class AbortsFirstUpdate:
    """The real client, except that its first UpdateJob fails as a concurrent write would."""

    def __init__(self, client, fake):
        self.client, self.fake, self.aborted = client, fake, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def update_job(self, request):
        if not self.aborted:
            self.aborted = True
            # Meanwhile another instance changed the time zone too.
            job = self.fake.jobs[request["job"]["name"]]
            job.time_zone = "UTC"
            raise api_exceptions.Aborted("Concurrent modification of the job.")
        return self.client.update_job(request=request)


def test_update_aborted_by_a_concurrent_write_is_reread_and_retried(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake, routes=[replace(nightly, schedule="0 5 * * *")]))
    client = AbortsFirstUpdate(scheduler_fake.client, scheduler_fake.fake)
    plan = build_plan(scheduler=client, config=CONFIG, routes=[nightly], parts=["scheduler"])

    apply_plan(plan)

    assert client.aborted
    assert plan.actions[0].result == (
        "updated schedule: 0 5 * * * -> 0 3 * * *; time_zone: UTC -> Europe/London")
    job = scheduler_fake.fake.jobs[job_path(nightly)]
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "Europe/London")


def test_a_paused_job_stays_paused_when_updated(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))
    assert pause_job(nightly, scheduler=scheduler_fake.client) == "PAUSED"
    changed = [replace(nightly, schedule="15 3 * * *")]

    plan = plan_jobs(scheduler_fake, routes=changed)
    assert plan.actions[0].state == "PAUSED" and "[paused]" in plan.actions[0].describe()
    apply_plan(plan)

    job = scheduler_fake.fake.jobs[job_path(nightly)]
    assert (job.schedule, job.state) == ("15 3 * * *", scheduler_v1.Job.State.PAUSED)


def test_run_now_calls_run_job(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))

    result = run_now(nightly, scheduler=scheduler_fake.client)

    assert scheduler_fake.fake.runs == [job_path(nightly)]
    assert (result.via, result.ident) == ("cloud-scheduler", job_path(nightly))
    assert "is running job" in str(result)


def test_run_now_on_a_missing_job_says_to_provision(scheduler_fake, nightly):
    with pytest.raises(ProvisioningError, match=r"Run `manage.py tasks_provision` to create"):
        run_now(nightly, scheduler=scheduler_fake.client)


def test_run_now_refuses_an_unscheduled_route(scheduler_fake):
    with pytest.raises(ProvisioningError, match="has no schedule"):
        run_now(get_route("add"), scheduler=scheduler_fake.client)


def test_pause_and_resume(scheduler_fake, nightly):
    apply_plan(plan_jobs(scheduler_fake))
    job = lambda: scheduler_fake.fake.jobs[job_path(nightly)]  # noqa: E731

    assert pause_job(nightly, scheduler=scheduler_fake.client) == "PAUSED"
    assert job().state == scheduler_v1.Job.State.PAUSED
    assert pause_job(nightly, scheduler=scheduler_fake.client) == "PAUSED"  # idempotent
    assert resume_job(nightly, scheduler=scheduler_fake.client) == "ENABLED"
    assert job().state == scheduler_v1.Job.State.ENABLED
    assert resume_job(nightly, scheduler=scheduler_fake.client) == "ENABLED"
    methods = [m for m, _ in scheduler_fake.fake.calls]
    assert methods.count("PauseJob") == 2 and methods.count("ResumeJob") == 2


def test_pause_without_cloud_scheduler_names_the_local_alternative(nightly, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # emulator mode: no Scheduler
    with pytest.raises(ProvisioningError, match="tasks_scheduler.*kill switch"):
        pause_job(nightly)


def test_failed_calls_are_reported_after_the_rest_are_applied(scheduler_fake, nightly, env):
    orphan = seed(scheduler_fake, f"{env}--gyrinx-scheduler--tests-tasks-retired")
    bad = replace(nightly, schedule_retry_count=9)  # the API allows 0-5
    plan = plan_jobs(scheduler_fake, routes=[bad])

    with pytest.raises(ProvisioningError) as caught:
        apply_plan(plan)

    assert "1 of 2 changes failed" in str(caught.value)
    assert "InvalidArgument" in str(caught.value) and "retry_count" in str(caught.value)
    assert orphan not in scheduler_fake.fake.jobs  # the delete still happened
    assert plan.actions[0].error and not plan.actions[0].result


@pytest.mark.emulator
def test_full_plan_with_the_emulator_and_the_fake(scheduler_fake, pubsub_emulator, nightly):
    """Both halves in one plan, in production mode: topics, subscriptions, then the job."""
    from gyrinx_tasks import clients

    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    kwargs = dict(publisher=publisher, subscriber=subscriber, scheduler=scheduler_fake.client,
                  config=CONFIG)
    try:
        plan = build_plan(**kwargs)
        count = len(get_routes())
        assert plan.summary() == (
            f"{2 * count + 1} to create, 0 to update, 0 to delete, 0 unchanged.")
        assert [kind for kind, _ in plan.by_kind()] == [
            Kind.TOPIC, Kind.SUBSCRIPTION, Kind.SCHEDULER_JOB]
        apply_plan(plan)
        assert not build_plan(**kwargs).has_changes
    finally:
        for action in plan.actions:
            if action.kind == Kind.SUBSCRIPTION:
                subscriber.delete_subscription(request={"subscription": action.name})
            elif action.kind == Kind.TOPIC:
                publisher.delete_topic(request={"topic": action.name})
        subscriber.close()
        publisher.stop()
