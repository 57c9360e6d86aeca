"""The only module that builds google.cloud clients (OIDC verification lives in auth.py).

The Pub/Sub clients honour PUBSUB_EMULATOR_HOST by themselves. The publisher is shared: one
``PublisherClient`` per process and settings (``shared_publisher``), because Django builds a
task backend per thread and each client holds its own gRPC channel and batching threads.
Other clients are built here and held by their users (the provisioner).
"""

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

# The batch settings a PubSubBackend uses unless its OPTIONS say otherwise. They only govern
# the batched paths (enqueue_many, publish_on_commit, bulk retries): a single enqueue does not
# go through the batcher (see publish_now). 5 ms lets a loop of publishes fill batches of up
# to 1,000 messages (Pub/Sub's limit per request) instead of paying 10 ms per small batch.
DEFAULT_BATCH_SETTINGS: dict[str, float | int] = {
    "max_latency": 0.005, "max_messages": 1000, "max_bytes": 1_000_000,
}
BATCH_SETTING_LIMITS: dict[str, tuple[type, float, float]] = {
    # name: (type, smallest, largest), as Pub/Sub accepts them per publish request.
    "max_latency": (float, 0.0, 60.0),
    "max_messages": (int, 1, 1000),
    "max_bytes": (int, 1, 10_000_000),
}



def _transient() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions

    # The errors the client library itself retries a publish on.
    return (exceptions.Aborted, exceptions.Cancelled, exceptions.DeadlineExceeded,
            exceptions.InternalServerError, exceptions.ResourceExhausted,
            exceptions.ServiceUnavailable, exceptions.Unknown)


TRANSIENT = _transient()
_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()


def batch_settings_problem(value: Any) -> str:
    """Why ``value`` is not a valid ``batch_settings`` option, or "" if it is."""
    if not isinstance(value, Mapping):
        return (f"batch_settings is {value!r}; set it to a dict such as "
                "{'max_latency': 0.005, 'max_messages': 1000}.")
    unknown = sorted(set(value) - set(BATCH_SETTING_LIMITS))
    if unknown:
        return (f"batch_settings has unknown keys: {', '.join(map(str, unknown))}; known keys "
                f"are {', '.join(BATCH_SETTING_LIMITS)}.")
    for name, (kind, low, high) in BATCH_SETTING_LIMITS.items():
        if name not in value:
            continue
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or (
                kind is int and not isinstance(number, int)) or not low <= number <= high:
            return (f"batch_settings[{name!r}] is {number!r}; set it to a "
                    f"{'whole number' if kind is int else 'number of seconds'} from {low:g} "
                    f"to {high:g}.")
    return ""


def batch_settings(value: Mapping[str, Any] | None = None) -> Any:
    """The BatchSettings for OPTIONS' ``batch_settings`` (merged over the defaults)."""
    from google.cloud.pubsub_v1.types import BatchSettings

    problem = batch_settings_problem(value or {})
    if problem:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(problem)
    return BatchSettings(**{**DEFAULT_BATCH_SETTINGS, **(value or {})})


def publisher_client(credentials: Any = None, client_options: Any = None,
                     batch_settings: Any = ()) -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient(credentials=credentials, client_options=client_options,
                                     batch_settings=batch_settings)


def _key(value: Any) -> Any:
    # client_options may be a dict or a ClientOptions object; repr() tells them apart well
    # enough to never share a client across different settings.
    return repr(sorted(value.items())) if isinstance(value, Mapping) else repr(value)


def shared_publisher(client_options: Any = None,
                     batch: Mapping[str, Any] | None = None) -> Any:
    """The process's PublisherClient for these settings, built on first use.

    PublisherClient is thread-safe. The key holds the process id (a client must not cross a
    fork, e.g. gunicorn's --preload) and PUBSUB_EMULATOR_HOST (read when the client is built).
    """
    key = (os.getpid(), os.environ.get("PUBSUB_EMULATOR_HOST", ""), _key(client_options),
           _key(batch or {}))
    client = _shared.get(key)
    if client is None:
        with _shared_lock:
            client = _shared.get(key)
            if client is None:
                client = publisher_client(client_options=client_options,
                                          batch_settings=batch_settings(batch))
                _shared[key] = client
    return client


def publish_now(client: Any, topic: str, data: bytes, attributes: Mapping[str, str],
                timeout: float) -> str:
    """Publish one message with one request and return its id once Pub/Sub has it.

    A real PublisherClient is called through its transport's Publish method: the batching
    ``publish()`` hands the message to a timer thread and then a commit thread, which costs
    a single confirmed publish several milliseconds with nothing to batch, and the GAPIC
    wrappers cost another 0.3 ms a call (profiled; see docs/performance.md). Transient errors
    are retried, as the client library does, until ``timeout`` seconds have passed.
    Anything else (a test double) goes through its ``publish()`` future.
    """
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    if not isinstance(client, pubsub_v1.PublisherClient):
        return str(client.publish(topic, data, **attributes).result(timeout=timeout))
    import grpc  # type: ignore[import-untyped]
    from google.api_core import exceptions
    from google.pubsub_v1 import PublishRequest, PubsubMessage

    request = PublishRequest(topic=topic, messages=[
        PubsubMessage(data=data, attributes=dict(attributes))])
    # The routing header the GAPIC client sends with every Publish.
    metadata = (("x-goog-request-params", f"topic={topic}"),)
    call = client.transport.publish
    deadline, delay = time.monotonic() + timeout, 0.1
    while True:
        try:
            response = call(request, timeout=max(0.01, deadline - time.monotonic()),
                            metadata=metadata)
            return str(response.message_ids[0])
        except grpc.RpcError as error:
            exc = exceptions.from_grpc_error(error)
            if not isinstance(exc, TRANSIENT) or time.monotonic() + delay > deadline:
                raise exc from error
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def subscriber_client(credentials: Any = None, client_options: Any = None) -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.SubscriberClient(credentials=credentials, client_options=client_options)


def scheduler_client(
    credentials: Any = None, client_options: Any = None, transport: Any = None
) -> Any:
    from google.cloud import scheduler_v1

    return scheduler_v1.CloudSchedulerClient(
        credentials=credentials, client_options=client_options, transport=transport
    )
