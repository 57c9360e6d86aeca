#!/usr/bin/env bash
# Old code (637e7c2) and new side by side: publish_on_commit / floor, push / bare view, and
# single enqueue() new / old, each with the load average. Arguments go to benchmarks/compare.py
# (--old-tree PATH, --pairs N). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m benchmarks.compare "$@"
