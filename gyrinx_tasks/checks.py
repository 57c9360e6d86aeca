"""System checks for gyrinx_tasks (filled in below)."""
