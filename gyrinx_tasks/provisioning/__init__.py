"""Make GCP match the registry: Pub/Sub topics, push subscriptions and Cloud Scheduler jobs.

The public API, used by ``manage.py tasks_provision``, the on-startup mode and the admin::

    plan = build_plan()            # reads GCP, changes nothing
    for action in plan.actions:    # kind, name, verb, changes (field diffs), note, state
        ...
    apply_plan(plan, progress=print)
    desired_state(config)          # what the plan compares against, from settings alone
    terraform_config()             # the same, as Terraform JSON (.tf.json)
    run_now(route); pause_job(route); resume_job(route)

Google clients may be passed in (``build_plan(publisher=..., subscriber=..., scheduler=...)``);
missing ones are built by ``gyrinx_tasks.clients``. What is created, changed and deleted, and
the IAM roles needed, are documented in docs/provisioning.md.
"""

from .config import (
    EMULATOR_PUSH_ENDPOINT,
    ProvisioningConfig,
    ProvisioningConfigError,
    ProvisioningError,
)
from .core import Clients, apply_plan, build_plan, desired_state, provision
from .jobs import (
    RunNowResult,
    get_job,
    job_name,
    pause_job,
    resume_job,
    run_now,
    uses_cloud_scheduler,
)
from .plan import Action, FieldChange, Kind, Plan, Verb
from .terraform import terraform_config

__all__ = [
    "EMULATOR_PUSH_ENDPOINT",
    "Action",
    "Clients",
    "FieldChange",
    "Kind",
    "Plan",
    "ProvisioningConfig",
    "ProvisioningConfigError",
    "ProvisioningError",
    "RunNowResult",
    "Verb",
    "apply_plan",
    "build_plan",
    "desired_state",
    "get_job",
    "job_name",
    "pause_job",
    "provision",
    "resume_job",
    "run_now",
    "terraform_config",
    "uses_cloud_scheduler",
]
