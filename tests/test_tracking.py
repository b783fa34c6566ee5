"""wandb tracking in offline mode writes the logged metrics, summary and row into the run's files.

Run: .venv/bin/python -m pytest -q tests/test_tracking.py   (one wandb run, a few seconds)

The ``.wandb`` file is a LevelDB-style log (7-byte ``:W&B`` header, then 32 KiB blocks of
crc32/length/type chunks) of protobuf ``Record`` messages; wandb 0.31 ships no Python reader,
so the test decodes it here with wandb's own protobuf classes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from benchmarks.running import tracking

BLOCK = 32 * 1024


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too short for a chunk header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
    return records


def items(records, kind: str) -> dict[str, list]:
    """key -> every JSON value logged under it in history (``kind="history"``) or summary updates."""
    out: dict[str, list] = {}
    for r in records:
        if r.WhichOneof("record_type") != kind:
            continue
        entries = r.history.item if kind == "history" else r.summary.update
        for e in entries:
            key = e.key or "/".join(e.nested_key)
            out.setdefault(key, []).append(json.loads(e.value_json))
    return out


def test_disabled_is_a_no_op(tmp_path):
    t = tracking.start_cell({"a": 1}, "s", "c", mode="disabled", dir=tmp_path)
    t.log(0, {"x": 1.0})
    t.finish({"metric_mean": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="offline"):
        tracking.start_cell({}, "s", "c", mode="offlin")


def test_offline_run_holds_metrics_summary_and_row(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    t = tracking.start_cell({"algorithm": "reptile", "inner_steps": 5}, "unit-suite", "unit-cell", dir=tmp_path)
    t.log(10, {"train_loss": 0.625, "eval_mean": 41.5})
    t.log(20, {"train_loss": 0.375})
    t.finish({"metric_mean": 97.25, "metric_ci95": 0.5, "eval_tasks": 600, "device": "cpu: test",
              "autograd_saved_bytes": float("nan")})
    # wandb's service buffers the offline log after finish() returns (seen in about 1 run of 3 here);
    # shutting it down, as process exit does, flushes it.
    import wandb

    wandb.teardown()
    [log] = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    records = read_records(log)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.display_name, run.job_type) == ("unit-suite", "unit-cell", "benchmark")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algorithm"] == "reptile" and config["inner_steps"] == 5
    history = items(records, "history")
    assert history["train_loss"] == [0.625, 0.375] and history["_step"][:2] == [10, 20]
    assert history["eval_mean"] == [41.5]
    summary = items(records, "summary")
    assert summary["metric_mean"][-1] == 97.25 and summary["eval_tasks"][-1] == 600
    assert summary["autograd_saved_bytes"][-1] is None  # NaN is not a number to report
    [table] = list(tmp_path.glob("wandb/offline-run-*/files/media/table/result_row_*.table.json"))
    saved = json.loads(table.read_text())
    assert dict(zip(saved["columns"], saved["data"][0]))["device"] == "cpu: test"


def test_a_failing_wandb_call_warns_instead_of_stopping_the_benchmark(capsys):
    class Broken:
        def log(self, *a, **k):
            raise OSError("disk full")

        def finish(self):
            raise OSError("disk full")

    t = tracking.WandbTracker(Broken())
    t.log(1, {"x": 1.0})
    t.log(2, {"x": 2.0})  # after the first failure, later calls are skipped
    t.finish({"metric_mean": 1.0})
    err = capsys.readouterr().err
    assert err.count("wandb log failed (OSError: disk full)") == 1 and "result row is unaffected" in err
