from django.tasks import task


@task
def routed_job() -> None:
    pass


@task
def forgotten_job() -> None:  # bound to the Pub/Sub "default" backend, but no route lists it
    pass


@task(backend="immediate")
def local_job() -> None:  # runs in-process, needs no route
    pass
