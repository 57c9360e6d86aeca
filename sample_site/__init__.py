"""A small Django project that shows gyrinx_tasks end to end: run ``scripts/sample.sh``."""
