"""The benchmark harness, one subpackage per job; imports go one way (records <- running, reporting, perf, gpu).

- ``records``: the tidy result files (rows, per-task scores, curves) and where each row came from.
- ``running``: suites (TOML data in ``suites/``) -> cells -> shared trainings -> cell processes -> rows.
- ``reporting``: tables, plots and the generated blocks of README.md and docs/, pure functions of the rows.
- ``perf``: performance measurement (limit benchmark, evaluation throughput, torch.func contenders).
- ``gpu``: the one prepared GPU script and its helpers.

Entry point: ``python -m benchmarks.cli --help`` (``make benchmark`` runs
``python -m benchmarks.cli run --suite default`` and then renders the tables).
"""
