"""The result files: schema checks, atomic rewrites, row replacement, curves.

    .venv/bin/python -m pytest -q tests/test_results_io.py
"""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.records import rows as results
from _rows import valid_row
from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION, ResultsFormatError, read_rows, write_curves, write_row


CLEAN = {"git_commit": "c0ffee", "git_dirty": False}
DEVICE = "cpu: Test CPU (1 thread)"


def make_row(**over) -> dict:
    base = dict(suite="s", cell="c", dataset="sine", split="maml", ways=1, shots=10, first_order=True, inner_steps=5,
                eval_inner_steps=10, meta_iterations=10, iterations_run=10, meta_batch=2, metric="mse",
                metric_mean=1.25, metric_ci95=0.1, eval_tasks=20, peak_memory_bytes=123, autograd_saved_bytes=None,
                git_commit="c0ffee", device=DEVICE, config_json='{"a": 1}', config_hash="0123456789ab",
                command="python -m benchmarks.cli run")
    return valid_row(**{**base, **over})


def test_round_trip_keeps_values_and_types(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    df = read_rows(path)
    assert list(df.columns) == COLUMNS and len(df) == 1
    r = df.iloc[0]
    assert r.metric_mean == 1.25 and r.config_hash == "0123456789ab" and r.command == "python -m benchmarks.cli run"
    # Booleans come back as booleans, not the strings "True"/"False".
    assert r.complete is True or r.complete == True  # noqa: E712 (numpy bool)
    assert not r.transductive and r.first_order
    assert pd.isna(r.autograd_saved_bytes)


def test_byte_counts_stay_integers_beside_a_row_without_them(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, make_row(autograd_saved_bytes=1841308))
    write_row(path, make_row(config_hash="ffffffffffff", cell="other"))  # torch.func: no autograd bytes
    text = path.read_text()
    assert ",1841308," in text and "1841308.0" not in text and ",123," in text
    assert read_rows(path).autograd_saved_bytes.iloc[0] == 1841308


def test_same_config_hash_replaces_other_hashes_append(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, make_row(complete=False, iterations_run=3))
    write_row(path, make_row(config_hash="ffffffffffff", cell="other"))
    write_row(path, make_row(complete=True, iterations_run=10))  # the resumed, finished run
    df = read_rows(path)
    assert len(df) == 2
    mine = df[df.config_hash == "0123456789ab"].iloc[0]
    assert mine.iterations_run == 10 and mine.complete == True  # noqa: E712
    assert results.completed_hashes(path, CLEAN, DEVICE) == {"0123456789ab", "ffffffffffff"}


def test_incomplete_rows_are_not_completed(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, make_row(complete=False))
    assert results.completed_hashes(path, CLEAN, DEVICE) == set()


def test_rows_of_another_commit_are_not_completed(tmp_path):
    """A fresh clone's committed rows come from an earlier commit: its `make benchmark` must run them again."""
    path = tmp_path / "rows.csv"
    write_row(path, make_row(git_commit="0ld"))
    write_row(path, make_row(config_hash="ffffffffffff", cell="other"))
    assert results.completed_hashes(path, CLEAN, DEVICE) == {"ffffffffffff"}
    assert results.completed_hashes(path, {"git_commit": "0ld", "git_dirty": False}, DEVICE) == {"0123456789ab"}
    write_row(path, make_row())  # the rerun at this commit replaces the old row of the same config
    df = read_rows(path)
    assert len(df) == 2 and set(df.git_commit) == {"c0ffee"}


def test_rows_of_another_device_or_of_uncommitted_code_are_not_completed(tmp_path):
    """A cell finished on 1 thread is not done for a run on 2; a row written with uncommitted changes does
    not say which, so it never counts, and with uncommitted changes now nothing counts."""
    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    write_row(path, make_row(config_hash="ffffffffffff", cell="dirty", git_dirty=True))
    assert results.completed_hashes(path, CLEAN, DEVICE) == {"0123456789ab"}
    assert results.completed_hashes(path, CLEAN, "cpu: Test CPU (2 threads)") == set()
    assert results.completed_hashes(path, {"git_commit": "c0ffee", "git_dirty": True}, DEVICE) == set()
    assert results.completed_hashes(path, {"git_commit": "c0ffee", "git_dirty": ""}, DEVICE) == set()  # unknown


def test_refuses_other_schema_version(tmp_path):
    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    df = pd.read_csv(path)
    df["schema_version"] = SCHEMA_VERSION + 1
    df.to_csv(path, index=False)
    with pytest.raises(ResultsFormatError, match=f"schema version.*{SCHEMA_VERSION + 1}.*move .* aside"):
        read_rows(path)
    # and the runner's writer refuses to mix rows into it
    with pytest.raises(ResultsFormatError):
        write_row(path, make_row(config_hash="aaaaaaaaaaaa"))


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_refuses_missing_or_extra_columns(tmp_path, change):
    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    df = pd.read_csv(path)
    df = df.drop(columns=["peak_memory_bytes"]) if change == "drop" else df.assign(surprise=1)
    df.to_csv(path, index=False)
    with pytest.raises(ResultsFormatError, match="peak_memory_bytes" if change == "drop" else "surprise"):
        read_rows(path)


def test_write_row_rejects_rows_off_schema(tmp_path):
    bad = make_row()
    del bad["device"]
    with pytest.raises(ValueError, match="device"):
        write_row(tmp_path / "rows.csv", bad)
    assert not (tmp_path / "rows.csv").exists()


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    before = path.read_bytes()

    def broken_to_csv(self, f, **kw):
        f.write("schema_version,half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_row(path, make_row(config_hash="bbbbbbbbbbbb"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_curves_replace_one_cell_and_keep_others(tmp_path):
    path = tmp_path / "curves.csv"
    pt = lambda i, loss: {"iteration": i, "train_loss": loss, "eval_metric": None, "eval_mean": None, "eval_ci95": None}  # noqa: E731
    write_curves(path, "s", "a", 0, DEVICE, [pt(1, 1.0), pt(2, 0.9)])
    write_curves(path, "s", "b", 0, DEVICE, [pt(1, 5.0)])
    write_curves(path, "s", "a", 0, DEVICE, [pt(1, 0.7)])
    df = results.read_curves(path)
    assert list(df.columns) == results.CURVE_COLUMNS
    assert sorted(zip(df.cell, df.train_loss)) == [("a", 0.7), ("b", 5.0)]
    write_curves(path, "s", "a", 0, "cuda: Test GPU", [pt(1, 0.5)])  # the same cell on a GPU: both curves kept
    df = results.read_curves(path)
    assert sorted(zip(df.cell, df.device, df.train_loss)) == [("a", DEVICE, 0.7), ("a", "cuda: Test GPU", 0.5),
                                                              ("b", DEVICE, 5.0)]


def test_concurrent_writers_lose_no_row(tmp_path):
    """Two processes adding rows to one file at once: every row survives (folder lock)."""
    import multiprocessing as mp

    path = tmp_path / "rows.csv"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(read_rows(path)) == 2 * 15


def _write_many(path, k):
    for i in range(15):
        write_row(path, make_row(config_hash=f"{k:02d}{i:010x}", cell=f"c{k}-{i}"))


def test_a_schema_1_file_is_refused_with_the_migration_and_migrated_in_place(tmp_path):
    from benchmarks.running import migrate

    path = tmp_path / "rows.csv"
    write_row(path, make_row())
    df = pd.read_csv(path).drop(columns=["training_key", "training_cells", "eval_mode", "parallel_jobs",
                                         "world_size", "backend_info"])
    df["schema_version"] = 1
    df["config_json"] = ('{"cell":"c","dataset":"sine","split":"maml","suite":"s","ways":1,"shots":10,'
                         '"train_query":10,"device":"cpu"}')
    df.to_csv(path, index=False)
    with pytest.raises(ResultsFormatError, match="python -m benchmarks.running.migrate"):
        read_rows(path)
    assert migrate.main([str(path)]) == 0
    row = read_rows(path).iloc[0]
    assert (row.training_cells, row.eval_mode, row.parallel_jobs, row.world_size) == (1, "serial", 1, 1)
    assert len(row.training_key) == 12 and row.metric_mean == 1.25
    assert migrate.main([str(path)]) == 0  # already current: unchanged


def test_a_rerun_under_another_device_name_takes_the_old_rows_scores_and_curve_with_it(tmp_path):
    from benchmarks.records.scores import SCORES_FILE, read_scores

    point = {"iteration": 5, "train_loss": 1.0, "eval_metric": "mse", "eval_mean": 1.2, "eval_ci95": 0.1}
    other = make_row(cell="other", config_hash="ba9876543210")
    results.write_result(tmp_path, other, [point], [1.0] * 20)
    results.write_result(tmp_path, make_row(), [point], [1.25] * 20)
    # the same configuration rerun with another malloc (or thread count): one row, its scores and curve only
    rerun = make_row(device="cpu: Test CPU (1 thread, tcmalloc)")
    results.write_result(tmp_path, rerun, [point, {**point, "iteration": 10}], [1.25] * 20)
    rows = read_rows(tmp_path / "rows.csv")
    assert sorted(zip(rows.cell, rows.device)) == [("c", rerun["device"]), ("other", DEVICE)]
    scores = read_scores(tmp_path / SCORES_FILE)
    assert sorted(set(zip(scores.config_hash, scores.device))) == [("0123456789ab", rerun["device"]),
                                                                   ("ba9876543210", DEVICE)]
    curves = results.read_curves(tmp_path / "curves.csv")
    assert sorted(zip(curves.cell, curves.device, curves.iteration)) == [
        ("c", rerun["device"], 5), ("c", rerun["device"], 10), ("other", DEVICE, 5)]


def test_the_newest_row_of_a_cell_wins_whichever_malloc_either_ran_with():
    from benchmarks.records.collect import latest
    from benchmarks.records.mallocs import without_malloc

    def row(device, date, hash_):
        return make_row(device=device, date=date, config_hash=hash_)

    rows = pd.DataFrame([row(DEVICE, "2026-01-01T00:00:00Z", "000000000001"),
                         row("cpu: Test CPU (1 thread, tcmalloc)", "2026-02-01T00:00:00Z", "000000000002"),
                         row("cpu: Test CPU (2 threads)", "2026-01-01T00:00:00Z", "000000000003")])
    kept = latest(rows)
    assert sorted(kept.config_hash) == ["000000000002", "000000000003"]  # threads still tell devices apart
    assert list(kept.columns) == list(rows.columns)
    assert without_malloc("cpu: Test CPU (2 threads, jemalloc)") == "cpu: Test CPU (2 threads)"
    assert without_malloc("cuda: NVIDIA H200") == "cuda: NVIDIA H200"
