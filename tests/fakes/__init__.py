"""In-process fakes of Google APIs, served over gRPC on 127.0.0.1 as the real client talks to
them (tests/fakes/scheduler.py, monitoring.py), and a fake Pub/Sub subscriber."""

import atexit
from concurrent import futures
from typing import Any

import grpc


def serve(handler: Any, what: str) -> str:
    """Serve ``handler`` (a grpc generic handler) on a free 127.0.0.1 port until the test
    session ends; returns the address. ``what`` names the fake in the error if it can't bind."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        raise RuntimeError(f"The {what} fake could not bind a port on 127.0.0.1.")
    server.start()
    atexit.register(server.stop, None)
    return f"127.0.0.1:{port}"
