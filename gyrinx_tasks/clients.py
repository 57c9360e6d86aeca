"""The only module that builds google.cloud clients (OIDC verification lives in auth.py).

Clients are built here and held by their users (the backend, the provisioner); nothing is
global. The Pub/Sub clients honour PUBSUB_EMULATOR_HOST by themselves.
"""

from typing import Any


def publisher_client(credentials: Any = None, client_options: Any = None) -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient(credentials=credentials, client_options=client_options)


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
