"""Module-level task functions the tests route and run."""

from django.tasks import task

CALLS: list[tuple] = []


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def echo(*args, **kwargs):
    CALLS.append((args, kwargs))
    return {"args": list(args), "kwargs": kwargs}


@task
def explode(message: str = "boom"):
    raise RuntimeError(message)


@task(takes_context=True)
def flaky(context, key: str) -> dict:
    """Fails on its first attempt, succeeds on the next: for redelivery tests."""
    if context.attempt < 2:
        raise ValueError(f"first attempt of {key} fails on purpose")
    return {"key": key, "attempt": context.attempt}


@task(takes_context=True)
def report_attempt(context) -> int:
    return context.attempt


@task
def in_transaction() -> bool:
    from django.db import connection

    return connection.in_atomic_block


@task
def nightly_cleanup() -> str:
    return "cleaned"


@task(backend="immediate")
def immediate_add(x: int, y: int) -> int:
    return x + y


@task(backend="immediate")
def immediate_explode() -> None:
    raise KeyError("immediate")
