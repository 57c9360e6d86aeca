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
    environ = os.environ
    return _worker_id(environ.get("K_REVISION", ""), environ.get("CLOUD_RUN_INSTANCE_ID", ""),
                      bool(environ.get("K_SERVICE")), os.getpid())


@lru_cache(maxsize=8)
def _worker_id(revision: str, instance: str, on_cloud_run: bool, pid: int) -> str:
    # Asked on every delivery; the answer changes only with these (a forked worker's pid).
    if revision and not instance and on_cloud_run:
        instance = _cloud_run_instance_id()
    if not instance:
        instance = f"{socket.gethostname()}:{pid}"
    return f"{revision}/{instance}" if revision else instance
