"""Benchmarks: routed CloudBunch turns measured side by side with a direct baseline.

Run ``python -m bench`` (``--quick`` for a smoke run); see docs/benchmarks.md.
"""
