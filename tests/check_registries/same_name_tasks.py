from django.tasks import task


@task
def add(x: int, y: int) -> int:  # same name as tests.tasks.add
    return x + y
