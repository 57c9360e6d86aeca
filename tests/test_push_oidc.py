"""OIDC at the push endpoint: valid tokens run the task, anything else is 403 and unrecorded."""

import logging

import pytest

from gyrinx_tasks.models import State, TaskExecution
from tests.helpers import envelope

pytest_plugins = ["tests.oidc"]
pytestmark = pytest.mark.django_db

BODY = envelope({"task_id": "t-oidc", "task_name": "add", "args": [1, 1], "kwargs": {}})


def push(client, authorization=None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return client.post("/tasks/pubsub/", BODY, content_type="application/json", headers=headers)


def test_valid_token_runs_the_task(client, oidc):
    response = push(client, oidc.header())
    assert response.status_code == 200
    assert TaskExecution.objects.get().status == State.SUCCESSFUL


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda o: None, id="missing header"),
        pytest.param(lambda o: "Basic abc", id="not bearer"),
        pytest.param(lambda o: o.header(aud="https://other.example/tasks/pubsub/"),
                     id="wrong audience"),
        pytest.param(lambda o: o.header(iss="https://evil.example"), id="wrong issuer"),
        pytest.param(lambda o: o.header(iat=1_600_000_000, exp=1_600_003_600), id="expired"),
        pytest.param(lambda o: o.header(email="someone@else.iam.gserviceaccount.com"),
                     id="other service account"),
        pytest.param(lambda o: o.header(email_verified=False), id="unverified email"),
        pytest.param(lambda o: "Bearer " + o.other_key_token(), id="bad signature"),
    ],
)
def test_bad_tokens_get_403_and_nothing_is_recorded(client, oidc, make_header):
    response = push(client, make_header(oidc))
    assert response.status_code == 403
    assert response.json()["outcome"] == "forbidden"
    assert not TaskExecution.objects.exists()


def test_verification_off_accepts_unauthenticated_pushes(client, settings):
    settings.TASKS_VERIFY_OIDC = False
    assert push(client).status_code == 200


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# _push mutants 7-11, 15, 18, 22: a refused token answers 403 with the reason, and the log
# line says which request was refused and why.
def test_a_refused_token_answers_403_with_its_reason_and_logs_it(client, oidc, caplog):
    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        response = push(client, oidc.header(email_verified=False))

    assert response.status_code == 403
    reason = "The push token's email is not verified (email_verified is not true)."
    assert response.json() == {"outcome": "forbidden", "detail": reason}
    assert f"Refused a push request: {reason}" in [r.getMessage() for r in caplog.records]
