"""CloudLoggingFormatter: records as Cloud Logging structured JSON, configured from LOGGING."""

import io
import json
import logging
import logging.config
from datetime import UTC, datetime, timedelta

import pytest
from django.test import RequestFactory

from gyrinx_tasks.cloud_logging import CloudLoggingFormatter, parse_trace, severity

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def capture():
    """log() logs one record through a formatter built the way dictConfig builds LOGGING's
    formatters, and answers the JSON object written for it. Global logging is left alone."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.cloud_logging")
    logger.setLevel(1)
    logger.propagate = False
    logger.addHandler(handler)

    def log(level=logging.INFO, msg="hello %s", *args, formatter=None, **kwargs):
        config = formatter or {"()": "gyrinx_tasks.cloud_logging.CloudLoggingFormatter"}
        handler.setFormatter(
            logging.config.DictConfigurator({"version": 1}).configure_formatter(dict(config)))
        stream.seek(0)
        stream.truncate()
        logger.log(level, msg, *(args or ("world",)), **kwargs)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1, lines  # one entry, one line, whatever the message holds
        return json.loads(lines[0])

    yield log
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_dictconfig_builds_it_with_no_arguments_either_way(capture):
    by_factory = capture()
    by_class = capture(formatter={"class": "gyrinx_tasks.cloud_logging.CloudLoggingFormatter"})
    for entry in (by_factory, by_class):
        assert entry["severity"] == "INFO"
        assert entry["message"] == "hello world"
        assert entry["logger"] == "tests.cloud_logging"
        assert entry["logging.googleapis.com/sourceLocation"]["function"] == "log"
        assert "logging.googleapis.com/labels" not in entry  # the record carries none
        assert "logging.googleapis.com/trace" not in entry
        written = datetime.fromisoformat(entry["time"])
        assert entry["time"].endswith("Z")
        assert abs(datetime.now(UTC) - written) < timedelta(minutes=1)


def test_format_setting_shapes_the_message(capture):
    entry = capture(formatter={"()": "gyrinx_tasks.cloud_logging.CloudLoggingFormatter",
                               "format": "[%(levelname)s] %(message)s"})
    assert entry["message"] == "[INFO] hello world"


@pytest.mark.parametrize(("level", "expected"), [
    (logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (25, "INFO"),
    (logging.WARNING, "WARNING"), (logging.ERROR, "ERROR"), (logging.CRITICAL, "CRITICAL"),
    (5, "DEFAULT"),
])
def test_severity_follows_the_level(capture, level, expected):
    assert severity(level) == expected
    assert capture(level)["severity"] == expected


def test_labels_for_task_result_message_attempt_and_duration(capture):
    entry = capture(extra={"task": "tests.tasks.add", "result_id": "r-1", "message_id": "m-9",
                           "attempt": 2, "duration": 0.25})
    assert entry["logging.googleapis.com/labels"] == {
        "task": "tests.tasks.add", "result_id": "r-1", "message_id": "m-9",
        "attempt": "2", "duration": "0.250s",
    }
    assert entry["duration_seconds"] == 0.25  # a number, for log-based distribution metrics


def test_only_the_labels_the_record_carries(capture):
    entry = capture(extra={"task": "tests.tasks.add", "duration": timedelta(seconds=3)})
    assert entry["logging.googleapis.com/labels"] == {"task": "tests.tasks.add",
                                                     "duration": "3.000s"}
    assert entry["duration_seconds"] == 3.0


def test_traceparent_becomes_trace_span_and_sampling(capture, settings):
    settings.GCP_PROJECT_ID = "my-project"
    entry = capture(extra={"trace": TRACEPARENT})
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE_ID}"
    assert entry["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert entry["logging.googleapis.com/trace_sampled"] is True
    unsampled = capture(extra={"trace": TRACEPARENT[:-2] + "00"})
    assert unsampled["logging.googleapis.com/trace_sampled"] is False


def test_cloud_trace_context_header_is_understood(capture, settings):
    settings.GCP_PROJECT_ID = "my-project"
    entry = capture(extra={"trace": f"{TRACE_ID}/1;o=1"})
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE_ID}"
    assert entry["logging.googleapis.com/spanId"] == "0000000000000001"  # decimal to hex
    assert entry["logging.googleapis.com/trace_sampled"] is True


def test_the_project_argument_wins_and_the_environment_is_the_fallback(
        capture, settings, monkeypatch):
    formatter = {"()": "gyrinx_tasks.cloud_logging.CloudLoggingFormatter", "project": "given"}
    entry = capture(extra={"trace": TRACE_ID}, formatter=formatter)
    assert entry["logging.googleapis.com/trace"] == f"projects/given/traces/{TRACE_ID}"
    settings.GCP_PROJECT_ID = ""
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    entry = capture(extra={"trace": TRACE_ID})
    assert entry["logging.googleapis.com/trace"] == f"projects/from-env/traces/{TRACE_ID}"


def test_without_a_project_the_trace_id_is_kept_as_a_plain_field(capture, settings, monkeypatch):
    settings.GCP_PROJECT_ID = ""
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    entry = capture(extra={"trace": TRACEPARENT})
    assert "logging.googleapis.com/trace" not in entry
    assert entry["trace_id"] == TRACE_ID


def test_a_full_trace_path_is_used_as_it_is(capture):
    entry = capture(extra={"trace": f"projects/other/traces/{TRACE_ID}"})
    assert entry["logging.googleapis.com/trace"] == f"projects/other/traces/{TRACE_ID}"


@pytest.mark.parametrize("value", ["", "nonsense", f"00-{'0' * 32}-00f067aa0ba902b7-01",
                                   "00-short-00f067aa0ba902b7-01"])
def test_no_trace_fields_for_values_that_are_not_traces(capture, value):
    assert parse_trace(value) == ("", "", None)
    entry = capture(extra={"trace": value})
    assert "logging.googleapis.com/trace" not in entry and "trace_id" not in entry


def test_the_trace_of_a_logged_django_request(capture, settings):
    settings.GCP_PROJECT_ID = "my-project"
    request = RequestFactory().post("/tasks/pubsub/", HTTP_TRACEPARENT=TRACEPARENT)
    entry = capture(logging.ERROR, extra={"request": request})
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE_ID}"
    request = RequestFactory().get("/", HTTP_X_CLOUD_TRACE_CONTEXT=f"{TRACE_ID}/10;o=0")
    entry = capture(extra={"request": request})
    assert entry["logging.googleapis.com/spanId"] == f"{10:016x}"
    assert entry["logging.googleapis.com/trace_sampled"] is False


def test_an_exception_puts_its_traceback_in_the_message(capture):
    try:
        raise ValueError("broken \"quoted\"\nsecond line")
    except ValueError:
        entry = capture(logging.ERROR, "failed %s", "hard", exc_info=True)
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("failed hard\nTraceback (most recent call last):")
    assert entry["message"].endswith('ValueError: broken "quoted"\nsecond line')


def test_it_formats_without_django_settings_through_the_environment(monkeypatch):
    """Outside Django (settings not configured), the project comes from the environment."""
    monkeypatch.setattr("gyrinx_tasks.cloud_logging.tasks_settings", _Unconfigured())
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    record = logging.makeLogRecord({"msg": "x", "levelno": logging.INFO, "trace": TRACE_ID})
    entry = json.loads(CloudLoggingFormatter().format(record))
    assert entry["logging.googleapis.com/trace"] == f"projects/env-project/traces/{TRACE_ID}"


class _Unconfigured:
    @property
    def GCP_PROJECT_ID(self):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("Requested setting GCP_PROJECT_ID, but settings are not "
                                   "configured.")
