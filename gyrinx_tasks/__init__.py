"""Django 6 background tasks on Google Cloud Pub/Sub and Cloud Scheduler."""

from .routes import TaskRoute

__all__ = ["TaskRoute"]
