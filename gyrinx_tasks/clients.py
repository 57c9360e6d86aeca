"""The only module that imports google.cloud / google.auth client libraries.

Clients are built here and held by their users (the backend, the provisioner); nothing is
global. The Pub/Sub clients honour PUBSUB_EMULATOR_HOST by themselves.
"""

from typing import Any


def publisher_client(credentials: Any = None, client_options: Any = None) -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(credentials=credentials, client_options=client_options)


def subscriber_client(credentials: Any = None, client_options: Any = None) -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient(credentials=credentials, client_options=client_options)


def scheduler_client(
    credentials: Any = None, client_options: Any = None, transport: Any = None
) -> Any:
    from google.cloud import scheduler_v1

    return scheduler_v1.CloudSchedulerClient(
        credentials=credentials, client_options=client_options, transport=transport
    )
