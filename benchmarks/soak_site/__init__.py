"""A tiny Django site for benchmarks/soak.py: its own settings, registry and task."""
