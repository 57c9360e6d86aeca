"""The push view (gyrinx_tasks/views.py): behaviour that mutmut showed no test held.

Each test names the mutants it kills (docs/testing.md, "Mutation testing"); the rest of
views.py's survivors are accounted for in scripts/mutation/survivors.md.
"""

import logging

import pytest
from django.db import OperationalError, connection

from gyrinx_tasks.models import State
from tests.helpers import envelope

pytest_plugins = ["tests.oidc"]  # the oidc fixtures
pytestmark = pytest.mark.django_db
URL = "/tasks/pubsub/"


def push(client, body: bytes, **headers):
    return client.post(URL, body, content_type="application/json", headers=headers)


def add_message(task_id: str) -> bytes:
    return envelope({"task_id": task_id, "task_name": "add", "args": [1, 2]})


# _reply mutants 9, 11: the answer says the run's status, not only its id.
def test_the_answer_names_the_run_and_its_status(client, settings):
    settings.TASKS_VERIFY_OIDC = False

    ran = push(client, add_message("t-ran")).json()
    rejected = push(client, envelope(["no", "task"], message_id="m-2")).json()

    assert (ran["outcome"], ran["result_id"], ran["status"]) == ("ran", "t-ran", State.SUCCESSFUL)
    assert (rejected["outcome"], rejected["status"]) == ("rejected", State.REJECTED)


# _push mutants 7-11, 15, 18, 22: a refused token answers 403 with the reason, and the log
# line says which request was refused and why.
def test_a_refused_token_answers_403_with_its_reason_and_logs_it(client, oidc, caplog):
    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        response = push(client, add_message("t-refused"),
                        Authorization=oidc.header(email_verified=False))

    assert response.status_code == 403
    reason = "The push token's email is not verified (email_verified is not true)."
    assert response.json() == {"outcome": "forbidden", "detail": reason}
    assert f"Refused a push request: {reason}" in [r.getMessage() for r in caplog.records]


# _push mutants 62-66, 70, 73, 77-79: a database outage answers 429 with a sentence, and the
# log line carries the database's own error.
def test_a_database_outage_is_answered_and_logged_with_its_error(client, settings, caplog):
    settings.TASKS_VERIFY_OIDC = False

    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection pool exhausted")

    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        with connection.execute_wrapper(refuse):
            response = push(client, add_message("t-outage"))

    assert response.status_code == 429
    assert response.json() == {"outcome": "database_unavailable",
                               "detail": "The database is unavailable; retry later."}
    assert ("Database unavailable while handling a push; asking for redelivery: connection "
            "pool exhausted") in [r.getMessage() for r in caplog.records]
