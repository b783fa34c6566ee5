"""Running suites: cell configs, suite files, the cell process, measurement and wandb tracking.

``python -m benchmarks.cli run`` expands a suite (``suites``) into cells (``config``) and runs
each in its own process (``runner``), which measures (``measure``), tracks (``tracking``) and
writes rows through ``benchmarks.records``.
"""
