"""Benchmarks that print figures; see docs/performance.md for how to run them and results.

They are scripts, not tests: timings on shared machines are too noisy to assert on, so each
script compares the variants side by side in one run and reports ratios.
"""
