import tests.check_registries.no_such_dependency  # noqa: F401  (a broken import inside tasks.py)
