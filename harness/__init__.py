"""What the tests and the benchmarks share: child processes and waiting on a condition.

Not part of the distribution (like ``tests/`` and ``bench/``): it runs from the repository.
The product never imports it (an import-linter contract says so).
"""
