"""Reporting: paper tables, comparison tables, plots and the generated blocks of README.md and docs/.

Every output is a pure function of the rows in ``results/*/`` (``benchmarks.records``);
``python -m benchmarks.cli tables`` and ``python -m benchmarks.reporting.readme`` regenerate them.
"""
