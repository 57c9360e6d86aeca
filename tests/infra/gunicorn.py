"""gunicorn serving a WSGI module on 127.0.0.1, for tests and benchmarks that need a real server.

Raises GunicornError (never skips) when gunicorn exits or does not answer within a minute.
"""

import http.client
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.infra import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN = str(REPO_ROOT / ".venv" / "bin" / "gunicorn")


class GunicornError(RuntimeError):
    """gunicorn did not start; the message ends with its log."""


class Gunicorn:
    def __init__(self, app: str, env: dict[str, str], log: Path, args: list[str]) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [GUNICORN, app, "-b", f"127.0.0.1:{self.port}", "--timeout", "60", *args],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GunicornError(f"gunicorn exited with {self.process.returncode}:\n"
                                    f"{log.read_text()[-3000:]}")
            try:
                # A worker has booted when the app answers (the master listens first).
                connection = self.connection()
                connection.request("GET", "/nothing-here/")
                connection.getresponse().read()
                connection.close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise GunicornError(f"gunicorn did not answer within 60 s:\n{log.read_text()[-3000:]}")

    def connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.connect()
        return connection

    def __enter__(self) -> "Gunicorn":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
