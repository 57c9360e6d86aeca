"""Identify the worker running a task: the Cloud Run revision and instance when present."""

import os
import socket
from functools import lru_cache

METADATA_INSTANCE_ID_URL = "http://metadata.google.internal/computeMetadata/v1/instance/id"


@lru_cache(maxsize=1)
def _cloud_run_instance_id() -> str:
    # Cloud Run exposes the instance id only through the metadata server.
    import requests

    try:
        response = requests.get(
            METADATA_INSTANCE_ID_URL, headers={"Metadata-Flavor": "Google"}, timeout=1
        )
        response.raise_for_status()
    except requests.RequestException:
        return ""
    return response.text.strip()[:24]


def current_worker_id() -> str:
    revision = os.environ.get("K_REVISION", "")
    instance = os.environ.get("CLOUD_RUN_INSTANCE_ID", "")
    if revision and not instance and os.environ.get("K_SERVICE"):
        instance = _cloud_run_instance_id()
    if not instance:
        instance = f"{socket.gethostname()}:{os.getpid()}"
    return f"{revision}/{instance}" if revision else instance
