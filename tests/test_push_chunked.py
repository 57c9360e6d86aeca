"""A push body sent chunked, without Content-Length, is read or answered 411, never lost.

Django reads a WSGI body only up to CONTENT_LENGTH, so before this fix such a body read as
empty, was rejected as malformed and acknowledged: the message was lost. A proxy or an
HTTP/2 front end may forward a push that way (Pub/Sub itself sends a Content-Length).
"""

import http.client
import io
import json
import logging
import sqlite3
import threading

import pytest
from django.core.handlers.wsgi import WSGIRequest

from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.views import ACK, pubsub_push
from tests.helpers import envelope
from tests.sqlite_wsgi import migrate, serve

pytestmark = pytest.mark.usefixtures("no_oidc")

URL = "/tasks/pubsub/"


class TrickleStream(io.RawIOBase):
    """A WSGI input giving at most ``step`` bytes per read (PEP 3333 allows short reads)."""

    def __init__(self, data: bytes, step: int = 700) -> None:
        self.data, self.step, self.taken = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.step if size is None or size < 0 else min(size, self.step)
        part = self.data[self.taken:self.taken + size]
        self.taken += len(part)
        return part


def wsgi_request(stream, **environ) -> WSGIRequest:
    """A request as a WSGI server hands it to Django: no CONTENT_LENGTH unless given."""
    return WSGIRequest({
        "REQUEST_METHOD": "POST", "PATH_INFO": URL, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": stream, "CONTENT_TYPE": "application/json",
        **environ,
    })


def message(task_id: str, args: list) -> dict:
    return {"task_id": task_id, "task_name": "add", "args": args, "kwargs": {}}


CHUNKED = {"HTTP_TRANSFER_ENCODING": "chunked"}
DECHUNKED = {**CHUNKED, "wsgi.input_terminated": True}  # what gunicorn hands over


@pytest.mark.django_db
def test_a_dechunked_body_without_content_length_runs_the_task():
    stream = TrickleStream(envelope(message("t-chunked", [20, 22])))

    response = pubsub_push(wsgi_request(stream, **DECHUNKED))

    assert response.status_code == 200, response.content[:300]
    assert json.loads(response.content)["outcome"] == "ran"
    execution = TaskExecution.objects.get(result_id="t-chunked")
    assert (execution.status, execution.return_value) == (State.SUCCESSFUL, 42)


@pytest.mark.django_db
def test_a_dechunked_body_over_the_limit_is_the_usual_rejection(settings):
    settings.TASKS_PUSH_MAX_BODY_BYTES = 1_000
    stream = TrickleStream(envelope(message("t-big", ["c" * 5_000])))

    response = pubsub_push(wsgi_request(stream, **DECHUNKED))

    # Read no further than one byte past the limit, however short the server's reads.
    assert stream.taken == 1_001
    assert response.status_code == ACK, response.content[:300]
    answer = json.loads(response.content)
    assert answer["outcome"] == "rejected"
    assert answer["detail"].startswith(
        "The request body is more bytes, over the push endpoint's limit of 1,000 bytes")
    rejection = TaskExecution.objects.get()
    assert rejection.status == State.REJECTED
    assert rejection.raw_message.startswith('{"message": {"data": ')


@pytest.mark.django_db
@pytest.mark.parametrize("coding", ["chunked", "gzip, Chunked"])
def test_a_chunked_body_the_server_did_not_dechunk_is_411_and_nothing_recorded(coding, caplog):
    stream = TrickleStream(envelope(message("t-lost", [1, 2])))

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        response = pubsub_push(wsgi_request(stream, HTTP_TRANSFER_ENCODING=coding))

    # 411 is not one of Pub/Sub's ack statuses: the message is redelivered, not lost.
    assert response.status_code == 411, response.content[:300]
    answer = json.loads(response.content)
    assert answer["outcome"] == "length_required"
    assert "Transfer-Encoding: chunked" in answer["detail"]
    assert "Send a Content-Length header" in answer["detail"]
    assert not TaskExecution.objects.exists()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "cannot be read" in caplog.records[0].getMessage()


@pytest.mark.django_db
@pytest.mark.parametrize("terminated", [False, True])
def test_a_body_with_content_length_is_read_to_that_length_only(terminated):
    body = envelope(message("t-plain", [3, 4]))
    # What follows the body on a kept-alive connection is not part of it.
    stream = TrickleStream(body + b"POST /tasks/pubsub/ HTTP/1.1\r\n")
    environ = {"CONTENT_LENGTH": str(len(body))}
    if terminated:
        environ["wsgi.input_terminated"] = True

    response = pubsub_push(wsgi_request(stream, **environ))

    assert response.status_code == 200, response.content[:300]
    execution = TaskExecution.objects.get(result_id="t-plain")
    assert (execution.status, execution.return_value) == (State.SUCCESSFUL, 7)


@pytest.mark.django_db
def test_an_empty_body_without_length_or_chunking_is_still_rejected():
    response = pubsub_push(wsgi_request(TrickleStream(b"")))

    assert response.status_code == ACK
    assert json.loads(response.content)["detail"].startswith("The request body is not JSON")


# Its own SQLite file whatever GYRINX_TEST_DB says: gunicorn runs in other processes, which
# cannot see the test's transaction, and the test reads the file with sqlite3 afterwards.
def test_gunicorn_runs_a_chunked_push_without_content_length(tmp_path):
    database = tmp_path / "gunicorn.sqlite3"
    migrate(database)
    body = envelope(message("t-gunicorn", [40, 2]), message_id="m-gunicorn")
    chunks = [body[i:i + 100] for i in range(0, len(body), 100)]

    with serve(database, tmp_path / "gunicorn.log", ["-w", "1", "-k", "sync"]) as server:
        connection = server.connection()
        connection.request("POST", URL, body=iter(chunks), encode_chunked=True,
                           headers={"Content-Type": "application/json",
                                    "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()

    assert len(chunks) > 1
    assert response.status == 200, answer
    assert answer["outcome"] == "ran"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT status, return_value, message_id FROM "
                          "gyrinx_tasks_taskexecution").fetchall()
    assert [(status, json.loads(value), message_id) for status, value, message_id in rows] == [
        ("SUCCESSFUL", 42, "m-gunicorn")]


# runserver's own server classes, which do not de-chunk: the body cannot be read, so 411.
@pytest.mark.django_db(transaction=True)
def test_runserver_answers_411_to_a_chunked_push():
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer

    server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        try:
            connection.request(
                "POST", URL, body=iter([envelope(message("t-runserver", [1, 2]))]),
                encode_chunked=True,
                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            )
        except BrokenPipeError:
            # The server may answer 411 and close before the body is all sent (a busy machine
            # or parallel workers make that likely); its answer is still there to read.
            pass
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

    assert response.status == 411, answer
    assert answer["outcome"] == "length_required"
    assert not TaskExecution.objects.exists()
