"""The authors' MAML as a peer (benchmarks/peers/official_maml.py): the patch, the task hand-over, the refusals, the rows.

Without TensorFlow and without a clone of cbfinn/maml (CI has neither) the patch is checked on a stand-in checkout
made from the patch's own lines; where both are here (``MAML_CHECKOUT=<clone>``, the peer environment of
``make setup-peers``), the patched graph is built and stepped on a tiny input.

    MAML_CHECKOUT=/path/to/maml .venv/bin/python -m pytest -q tests/test_peer_official_maml.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.peers import official_maml as peer
from benchmarks.peers.tf_env import ENV_DIR, TF_ENV, PeerError
from benchmarks.records.rows import check_row

TINY = """
description = "tiny"
[[group]]
name = "tiny-{shots}s-{algorithm}"
dataset = "omniglot"
split = "small"
ways = 5
shots = [1, 2]
meta_batch = 3
meta_iterations = 2
transductive = true
algorithms = ["fomaml", "maml"]
learner = { inner_steps = 1, inner_lr = 0.4, inner_optimizer = "sgd", meta_lr = 0.001 }
eval = { num_tasks = 4, seed = 0, inner_steps = 3, inner_lr = 0.4, inner_optimizer = "sgd", inner_batch = 0 }

[[group.when]]
shots = 1
set = { train_query = 1, eval = { query = 1 } }

[[group.when]]
shots = 2
set = { train_query = 2, eval = { query = 2 } }
"""


def stand_in_checkout(root: Path) -> Path:
    """Files with the patch's removed lines where the patch expects them (the rest filler): what it applies to."""
    wanted: dict[str, dict[int, str]] = {}
    name = None
    for line in peer.PATCH.read_text().splitlines():
        if line.startswith("--- a/"):
            name, number = line[6:], None
        elif line.startswith("@@") and name:
            number = int(re.match(r"@@ -(\d+)", line).group(1))
        elif line.startswith("-") and name and number is not None and not line.startswith("---"):
            wanted.setdefault(name, {})[number] = line[1:]
            number += 1
    root.mkdir(parents=True)
    for f in peer.FILES:
        lines = wanted.get(f, {})
        size = max(lines, default=0) + 20
        (root / f).write_text("".join(lines.get(i, f"# line {i}") + "\n" for i in range(1, size + 1)))
    return root


def test_the_patch_applies_to_a_copy_and_leaves_the_checkout_alone(tmp_path):
    checkout = stand_in_checkout(tmp_path / "maml")
    before = {f: (checkout / f).read_text() for f in peer.FILES}
    peer.check_checkout(checkout)
    code = peer.patch_copy(checkout, tmp_path / "work")
    assert {f: (checkout / f).read_text() for f in peer.FILES} == before
    for f in ("main.py", "maml.py", "utils.py", "data_generator.py"):
        text = (code / f).read_text()
        assert "import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()\n" in text, f
        assert not re.search(r"tf\.contrib\.\w[\w.]*\(|import .*contrib|tf_layers\.", text), f  # no contrib call left
    utils = (code / "utils.py").read_text()
    assert "def batch_norm(inp, activation_fn, reuse, scope):" in utils and "0.001" in utils
    assert "tf.glorot_uniform_initializer(dtype=dtype)" in (code / "maml.py").read_text()


def test_another_code_or_version_is_refused_by_name(tmp_path):
    with pytest.raises(PeerError, match="no checkout at .*git clone https://github.com/cbfinn/maml"):
        peer.check_checkout(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    with pytest.raises(PeerError, match="is not a checkout of cbfinn/maml: main.py"):
        peer.check_checkout(tmp_path / "other")
    changed = stand_in_checkout(tmp_path / "changed")
    (changed / "utils.py").write_text("import tensorflow.compat.v2 as tf\n")
    with pytest.raises(PeerError, match="does not apply .*a7f45f1"):
        peer.check_checkout(changed)


def test_the_official_code_is_handed_the_very_tasks_our_sampler_draws(omniglot_root, tmp_path, monkeypatch):
    """Gathering the exported indices from the exported pool, as the driver does, gives our training batches."""
    from datasets import load_pool

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    pool = load_pool("omniglot", "small", "train")
    images = np.load(peer.export_pool(pool, tmp_path / "pool.npy"))
    draws = np.load(peer.export_draws(pool, 5, 2 + 2, 7, range(3 * 4), tmp_path / "d.npy", (3, 4)))
    assert images.shape == (pool.num_classes, pool.examples_per_class, 28, 28) and draws.shape == (3, 4, 5, 4)
    for it in range(3):
        ours = pool.sample_batch(5, 2, 2, seed=7, indices=range(4 * it, 4 * it + 4))
        x = images.reshape(-1, 28, 28)[draws[it]]  # [tasks, ways, shots + query, 28, 28], class-major
        np.testing.assert_array_equal(x[:, :, :2].reshape(4, 10, 28, 28), ours.support_x[:, :, 0].numpy())
        np.testing.assert_array_equal(x[:, :, 2:].reshape(4, 10, 28, 28), ours.query_x[:, :, 0].numpy())
        assert ours.support_y.tolist() == [[c for c in range(5) for _ in range(2)]] * 4  # the driver's one-hot order


def test_cells_the_official_code_cannot_run_are_refused_before_anything_runs(tmp_path):
    from dataclasses import replace

    from benchmarks.running.suites import load_suite

    (tmp_path / "tiny.toml").write_text(TINY)
    cell = load_suite(str(tmp_path / "tiny.toml"))[0]
    assert peer.official_settings(cell)["test_num_updates"] == 10
    bad = [replace(cell, dataset="sine"), replace(cell, eval=replace(cell.eval, transductive=False)),
           replace(cell, eval=replace(cell.eval, inner_lr=0.1)),
           replace(cell, learner=replace(cell.learner, inner_optimizer="adam")),
           replace(cell, train_query=3), replace(cell, eval=replace(cell.eval, inner_steps=11))]
    for c, why in zip(bad, ["dataset sine", "non-transductive", "fine-tuning other than SGD of the training's step size",
                            "inner optimiser adam", "train_query = 3", "eval.inner_steps = 11"]):
        with pytest.raises(PeerError, match=why):
            peer.official_settings(c)


def test_rows_are_of_the_schema_and_pair_with_ours_task_by_task(tmp_path):
    from benchmarks.peers.accuracy_rows import accuracy_rows
    from benchmarks.reporting import official_accuracy
    from benchmarks.running.suites import load_suite
    from benchmarks.running.trainings import group

    (tmp_path / "tiny.toml").write_text(TINY)
    cell = load_suite(str(tmp_path / "tiny.toml"))[0]
    (training,) = group([cell])
    result = {"step_wall_s": [0.1, 0.2], "peak_rss_bytes": 10 ** 8, "tensorflow": "2.21.0",
              "evaluations": {cell.cell: {"correct": [5, 4, 3, 5], "queries": 5, "wall_s": 1.0}}}
    ((row, scores),) = accuracy_rows(training, result, peer.NAME, "a7f45f1", "tensorflow 2.21.0", 1, "test",
                                     {"git_commit": "a" * 40, "git_dirty": False}, peer.SUITE)
    assert check_row(row) is None and scores == [100.0, 80.0, 60.0, 100.0]
    assert (row["cell"], row["algorithm"], row["first_order"], row["backend"]) == (
        f"official-{cell.cell}", "fomaml", True, "official-tf")
    # Ours: the same cell and config, 20 points lower on every task.
    from benchmarks.records.rows import write_result

    write_result(tmp_path / "results" / peer.SUITE, row, [], scores)
    ours = {**row, "suite": cell.suite, "cell": cell.cell, "backend": "reference", "config_hash": "b" * 12,
            "git_commit": "b" * 40, "metric_mean": row["metric_mean"] - 20,
            "config_json": json.dumps({**cell.to_dict(), "device": "cpu"})}
    write_result(tmp_path / "results" / cell.suite, ours, [], [s - 20 for s in scores])
    from benchmarks.records.collect import load_rows

    rows, _ = load_rows(tmp_path / "results")
    table = "\n".join(official_accuracy.lines(rows, str, official_accuracy.MAML)).splitlines()
    assert "make peer-official-maml" in table[0] and "very training tasks" in table[0]
    (line,) = [t for t in table if t.startswith("| tiny |")]
    assert "fomaml, omniglot/small 5-way 1-shot, transductive" in line and "+20.00 ± 0.00 (n=4)" in line
    assert official_accuracy.lines(rows, str) == []  # none of these rows is the Reptile code's


def test_the_cli_says_what_is_missing_and_exits_2(tmp_path, capsys):
    assert peer.main(["--checkout", str(tmp_path / "nothing"), "--out", str(tmp_path / "results")]) == 2
    assert "no checkout at" in capsys.readouterr().err
    assert peer.main(["--checkout", "x", "--suite", "default", "--cells", "*reptile*"]) == 2
    assert "no evaluated MAML or first-order MAML cells" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def _peer_python() -> str | None:
    py = os.environ.get("PEER_PYTHON") or str(ENV_DIR / "bin" / "python")
    return py if Path(py).is_file() else None


@pytest.mark.skipif(not os.environ.get("MAML_CHECKOUT"), reason="no clone of cbfinn/maml (set MAML_CHECKOUT)")
@pytest.mark.skipif(_peer_python() is None, reason=f"no TensorFlow environment ({ENV_DIR}: make setup-peers)")
def test_the_patched_graph_builds_and_steps_on_a_tiny_input(tmp_path):
    code = peer.patch_copy(Path(os.environ["MAML_CHECKOUT"]), tmp_path / "maml")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pool.npy", rng.random((8, 6, 28, 28), dtype=np.float32))
    np.save(tmp_path / "draws.npy", np.stack([np.stack([rng.permutation(48)[:10].reshape(5, 2) for _ in range(2)])
                                              for _ in range(2)]).astype(np.int32))
    np.save(tmp_path / "eval.npy", np.stack([rng.permutation(48)[:10].reshape(5, 2) for _ in range(3)]).astype(np.int32))
    settings = {"mode": "accuracy", "seed": 0, "ways": 5, "shots": 1, "inner_lr": 0.4, "inner_steps": 1,
                "meta_batch": 2, "meta_lr": 0.001, "meta_iterations": 2, "first_order": False, "test_num_updates": 3,
                "train_pool": str(tmp_path / "pool.npy"), "train_draws": str(tmp_path / "draws.npy"),
                "evaluations": [{"cell": "x", "pool": str(tmp_path / "pool.npy"), "draws": str(tmp_path / "eval.npy"),
                                 "shots": 1, "inner_steps": 3}]}
    (tmp_path / "s.json").write_text(json.dumps(settings))
    p = subprocess.run([_peer_python(), str(peer.DRIVER), "--checkout", str(code), "--settings",
                        str(tmp_path / "s.json"), "--threads", "1"], capture_output=True, text=True,
                       env={**os.environ, **TF_ENV}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(out["losses"]) == 2 and all(np.isfinite(out["losses"]))
    assert len(out["evaluations"]["x"]["correct"]) == 3 and out["evaluations"]["x"]["queries"] == 5
    assert out["malloc"] in ("glibc", "tcmalloc")
