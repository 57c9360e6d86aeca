"""The only module that builds google.cloud clients (OIDC verification lives in auth.py).

The Pub/Sub clients honour PUBSUB_EMULATOR_HOST by themselves. The publisher is shared: one
``PublisherClient`` per process and settings (``shared_publisher``), because Django builds a
task backend per thread and each client holds its own gRPC channel and batching threads.
Other clients are built here and held by their users (the provisioner).
"""

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any


def _transient() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions

    # The errors the client library itself retries a publish on.
    return (exceptions.Aborted, exceptions.Cancelled, exceptions.DeadlineExceeded,
            exceptions.InternalServerError, exceptions.ResourceExhausted,
            exceptions.ServiceUnavailable, exceptions.Unknown)


TRANSIENT = _transient()
_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()


def publisher_client(credentials: Any = None, client_options: Any = None) -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient(credentials=credentials, client_options=client_options)


def _key(value: Any) -> Any:
    # client_options may be a dict or a ClientOptions object; repr() tells them apart well
    # enough to never share a client across different settings.
    return repr(sorted(value.items())) if isinstance(value, Mapping) else repr(value)


def shared_publisher(client_options: Any = None) -> Any:
    """The process's PublisherClient for these settings, built on first use.

    PublisherClient is thread-safe. The key holds the process id (a client must not cross a
    fork, e.g. gunicorn's --preload) and PUBSUB_EMULATOR_HOST (read when the client is built).
    """
    key = (os.getpid(), os.environ.get("PUBSUB_EMULATOR_HOST", ""), _key(client_options))
    client = _shared.get(key)
    if client is None:
        with _shared_lock:
            client = _shared.get(key)
            if client is None:
                client = publisher_client(client_options=client_options)
                _shared[key] = client
    return client


def _is_real(client: Any) -> bool:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return isinstance(client, pubsub_v1.PublisherClient)


def _request(topic: str, messages: list[tuple[bytes, Mapping[str, str]]]) -> Any:
    from google.pubsub_v1 import PublishRequest

    # Raw protobuf messages, wrapped once: a proto-plus wrapper per message would add Python
    # work for every message of a request of up to 1,000.
    request = PublishRequest.pb()(topic=topic)
    for data, attributes in messages:
        request.messages.add(data=data, attributes=attributes)
    return PublishRequest.wrap(request)


def _send(client: Any, topic: str, request: Any, deadline: float,
          first: Any = None) -> list[str]:
    """Send one Publish request, retrying transient errors (as the client library does)
    until ``deadline``; ``first`` is an already started call's future. Returns the ids."""
    import grpc  # type: ignore[import-untyped]
    from google.api_core import exceptions

    # The routing header the GAPIC client sends with every Publish.
    from .exceptions import PublishNotConfirmed

    metadata = (("x-goog-request-params", f"topic={topic}"),)
    call, delay = client.transport.publish, 0.1
    earlier: Exception | None = None  # a transient failure: that try may have been stored
    while True:
        try:
            if first is not None:
                # Clear it before waiting: a failed call is sent again, not re-read.
                started, first = first, None
                response = started.result()
            else:
                response = call(request, timeout=max(0.01, deadline - time.monotonic()),
                                metadata=metadata)
            return [str(message_id) for message_id in response.message_ids]
        except grpc.RpcError as error:
            exc = exceptions.from_grpc_error(error)
            if not isinstance(exc, TRANSIENT) and earlier is not None:
                raise PublishNotConfirmed(
                    f"{exc} (after an earlier try failed with {type(earlier).__name__}: "
                    "Pub/Sub may have stored that one)") from exc
            if not isinstance(exc, TRANSIENT) or time.monotonic() + delay > deadline:
                raise exc from error
            earlier = exc
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def start_publish(client: Any, topic: str, data: bytes, attributes: Mapping[str, str],
                  timeout: float) -> Callable[[], str]:
    """Send one message now (as publish_now) and return a function that waits for its id.

    Lets the caller do other work (enqueue() inserts its row) while the request is in
    flight. The returned function raises what publish_now would, retrying transient errors
    until ``timeout`` seconds after this call.
    """
    try:
        if not _is_real(client):
            future = client.publish(topic, data, **attributes)
            return lambda: str(future.result(timeout=timeout))
        deadline = time.monotonic() + timeout
        request = _request(topic, [(data, attributes)])
        metadata = (("x-goog-request-params", f"topic={topic}"),)
        started = client.transport.publish.future(request, timeout=timeout, metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - raised when the caller waits, as publish_now would
        error = exc

        def failed() -> str:
            raise error

        return failed
    return lambda: _send(client, topic, request, deadline, first=started)[0]


def publish_now(client: Any, topic: str, data: bytes, attributes: Mapping[str, str],
                timeout: float) -> str:
    """Publish one message with one request and return its id once Pub/Sub has it.

    A real PublisherClient is called through its transport's Publish method: the batching
    ``publish()`` hands the message to a timer thread and then a commit thread, so a single
    confirmed publish waits on two thread hand-offs with nothing to batch, and the GAPIC
    wrappers add their own work to every call (docs/performance.md has the profile).
    Transient errors are retried until ``timeout`` seconds have passed. Anything else (a test
    double) goes through its ``publish()`` future.
    """
    if not _is_real(client):
        return str(client.publish(topic, data, **attributes).result(timeout=timeout))
    return _send(client, topic, _request(topic, [(data, attributes)]),
                 time.monotonic() + timeout)[0]


# Pub/Sub's limits per Publish request: 1,000 messages and 10 MB (we stay under 9 MB so
# the request's own framing fits).
MAX_REQUEST_MESSAGES = 1000
MAX_REQUEST_BYTES = 9_000_000


def publish_many(client: Any, topic: str, messages: list[tuple[bytes, Mapping[str, str]]],
                 timeout: float) -> list[str | Exception]:
    """Publish ``messages`` to one topic: a message id, or the error, for each, in order.

    A real client sends requests of up to 1,000 messages, all in flight at once, then waits
    for them (one failed request fails exactly its messages). A test double publishes each
    through its ``publish()`` future.
    """
    results: list[str | Exception] = []
    if not _is_real(client):
        futures: list[Any] = []
        for data, attributes in messages:
            try:
                futures.append(client.publish(topic, data, **attributes))
            except Exception as exc:  # noqa: BLE001 - the caller records it on the run
                futures.append(exc)
        for future in futures:
            if isinstance(future, Exception):
                results.append(future)
                continue
            try:
                results.append(str(future.result(timeout=timeout)))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results
    groups: list[list[tuple[bytes, Mapping[str, str]]]] = [[]]
    size = 0
    for data, attributes in messages:
        weight = len(data) + sum(len(k) + len(v) for k, v in attributes.items()) + 16
        if groups[-1] and (len(groups[-1]) >= MAX_REQUEST_MESSAGES
                           or size + weight > MAX_REQUEST_BYTES):
            groups.append([])
            size = 0
        groups[-1].append((data, attributes))
        size += weight
    deadline = time.monotonic() + timeout
    metadata = (("x-goog-request-params", f"topic={topic}"),)
    started = []
    for group in groups:
        if not group:
            continue
        request = _request(topic, group)
        future = client.transport.publish.future(request, timeout=timeout, metadata=metadata)
        started.append((group, request, future))
    for group, request, future in started:
        try:
            ids = _send(client, topic, request, deadline, first=future)
        except Exception as exc:  # noqa: BLE001 - every message of the request failed
            results.extend([exc] * len(group))
        else:
            results.extend(ids)
    return results


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


def monitoring_client(
    credentials: Any = None, client_options: Any = None, transport: Any = None
) -> Any:
    from google.cloud import monitoring_v3

    return monitoring_v3.MetricServiceClient(
        credentials=credentials, client_options=client_options, transport=transport
    )
