"""What the strict parsing of push envelopes costs, next to a naive parse, side by side.

Run from the repository root (about 20 seconds, no database):

    .venv/bin/python -m benchmarks.push_parsing

``strict`` is gyrinx_tasks.push.parse_envelope: JSON without NaN, depth and storability
checks over every string (no NUL, no unpaired surrogate), range checks on ids and dates.
``naive`` is what the endpoint did before: json.loads of the body, base64, json.loads of
the data, and type checks of the top-level fields only. Both parse the same bytes in the same
process, alternating, so the ratio is measured under the same load. ``raw`` is safe_raw(), the
escaped and capped copy of the body kept with a rejection, computed for every push.
"""

import argparse
import base64
import json
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import configure_django, machine_lines, median, sqlite_database, table


def naive(body: bytes) -> dict[str, Any]:
    envelope = json.loads(body)
    payload = json.loads(base64.b64decode(envelope["message"]["data"], validate=True))
    assert isinstance(payload["task_id"], str) and isinstance(payload["args"], list)
    return payload


def envelope(args: list[Any], kwargs: dict[str, Any]) -> bytes:
    message = {"task_id": "0b7d0c5e-6a8e-4c1e-9a57-1d1f1b3c2e4f", "task_name": "echo",
               "args": args, "kwargs": kwargs, "enqueued_at": "2026-11-23T10:00:00+00:00"}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return json.dumps({"message": {"data": data, "messageId": "1234567890123456",
                                   "attributes": {"trigger": "enqueue"},
                                   "publishTime": "2026-11-23T10:00:00Z"},
                       "subscription": "projects/p/subscriptions/s"}).encode()


CASES = {
    "typical (2 args)": envelope([42, "welcome"], {"locale": "en-GB"}),
    "1,000 small records": envelope(
        [[{"id": i, "name": f"user {i}", "tags": ["a", "b"]} for i in range(1000)]], {}),
    "9 MB string argument": envelope(["x" * 9_000_000], {}),
}


def timed(parse: Callable[[bytes], Any], body: bytes) -> float:
    start = time.perf_counter()
    parse(body)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    options = parser.parse_args()
    configure_django(sqlite_database("/tmp/unused.sqlite3"), "tests.urls")
    from gyrinx_tasks.push import parse_envelope, safe_raw

    rows = []
    for name, body in CASES.items():
        rounds = options.rounds if len(body) < 1_000_000 else max(options.rounds // 5, 5)
        strict_times, naive_times, raw_times = [], [], []
        for _ in range(rounds):  # alternate, so both see the same machine state
            strict_times.append(timed(parse_envelope, body))
            naive_times.append(timed(naive, body))
            raw_times.append(timed(safe_raw, body))
        strict, plain, raw = median(strict_times), median(naive_times), median(raw_times)
        rows.append([name, f"{len(body):,}", f"{plain * 1000:.3f}", f"{strict * 1000:.3f}",
                     f"{strict / plain:.2f}x", f"{raw * 1000:.3f}", str(rounds)])
    print("\n".join(machine_lines()))
    print()
    print(table(["body", "bytes", "naive ms", "strict ms", "strict/naive", "raw ms", "rounds"],
                rows))


if __name__ == "__main__":
    main()
