"""The benchmark harness: suites (TOML data), the runner, measurement, result rows, tables, plots, tracking.

Entry point: ``python -m benchmarks.cli --help`` (``make benchmark`` runs
``python -m benchmarks.cli run --suite default`` and then renders the tables).
"""
