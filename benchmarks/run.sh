#!/usr/bin/env bash
# Run every benchmark and write benchmarks/results/latest.md. Arguments go to benchmarks/run.py
# (--quick for small sizes, --only NAME to pick, --out PATH). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m benchmarks.run "$@"
