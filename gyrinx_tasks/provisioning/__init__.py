"""Make GCP match the registry: Pub/Sub topics, push subscriptions and Cloud Scheduler jobs.

The public API, used by ``manage.py tasks_provision``, the on-startup mode and the admin::

    plan = build_plan()            # reads GCP, changes nothing
    for action in plan.actions:    # kind, name, verb, changes (field diffs), note, state
        ...
    apply_plan(plan, progress=print)
    desired_state(config)          # what the plan compares against, from settings alone
    terraform_config()             # the same, as Terraform JSON (.tf.json)

Google clients may be passed in (``build_plan(publisher=..., subscriber=..., scheduler=...)``);
missing ones are built by ``gyrinx_tasks.clients``. What is created, changed and deleted, and
the IAM roles needed, are documented in docs/provisioning.md. Running, pausing and resuming
a job that exists are not provisioning: they live in ``gyrinx_tasks.scheduling.jobs``.
"""

from .config import (
    EMULATOR_PUSH_ENDPOINT,
    ProvisioningConfig,
    ProvisioningConfigError,
    ProvisioningError,
)
from .core import Clients, apply_plan, build_plan, desired_state, provision
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
    "Verb",
    "apply_plan",
    "build_plan",
    "desired_state",
    "provision",
    "terraform_config",
]
