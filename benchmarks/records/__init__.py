"""Result files and their provenance: the contract between running suites and reporting on them.

``rows``: one wide tidy row per cell (``rows.csv``) and training curves (``curves.csv``);
``provenance``: code version, command, versions and device recorded with every row.
Nothing here imports the rest of ``benchmarks``.
"""
