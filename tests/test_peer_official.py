"""The official-Reptile peer without TensorFlow: the checkout check, the patch, the data layout, the parsing
of a timing run's output, the rows it writes, and its refusals (no TensorFlow in CI: small fakes stand in).

    .venv/bin/python -m pytest -q tests/test_peer_official.py
"""
from __future__ import annotations

import json
import sys

import pytest

from benchmarks.peers import official_reptile as peer, timing
from benchmarks.records.rows import check_row


def fake_checkout(root):
    for f in peer.FILES:
        path = root / f
        path.parent.mkdir(parents=True, exist_ok=True)
        tf = "import tensorflow as tf\n" if any(f == p for p, _, _ in peer.PATCH) else ""
        path.write_text(f'"""{f}"""\n\nimport random\n{tf}\ndef main():\n    pass\n')
    return root


def test_a_checkout_of_the_official_code_is_patched_in_a_copy(tmp_path):
    checkout = fake_checkout(tmp_path / "supervised-reptile")
    before = {f: (checkout / f).read_text() for f in peer.FILES}
    peer.check_checkout(checkout)
    code = peer.patch_copy(checkout, tmp_path / "work")
    assert {f: (checkout / f).read_text() for f in peer.FILES} == before  # the user's clone is untouched
    run = (code / "run_omniglot.py").read_text().splitlines()
    assert "import tensorflow.compat.v1 as tf" in run and run[run.index("import tensorflow.compat.v1 as tf") + 1] == \
        "tf.disable_v2_behavior()"
    models = (code / "supervised_reptile" / "models.py").read_text()
    assert "import tensorflow.compat.v1 as tf" in models and "import tensorflow as tf" not in models


def test_no_checkout_or_a_checkout_of_something_else_is_refused_by_name(tmp_path):
    with pytest.raises(peer.PeerError, match="no checkout at .*git clone https://github.com/openai/supervised-reptile"):
        peer.check_checkout(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("something else")
    with pytest.raises(peer.PeerError, match="is not a checkout of openai/supervised-reptile: run_omniglot.py"):
        peer.check_checkout(tmp_path / "other")
    checkout = fake_checkout(tmp_path / "changed")
    (checkout / "supervised_reptile" / "models.py").write_text("import tensorflow.compat.v2 as tf\n")
    with pytest.raises(peer.PeerError, match="lacks the line 'import tensorflow as tf'"):
        peer.check_checkout(checkout)


def test_the_small_split_is_laid_out_as_the_official_reader_expects(omniglot_root, tmp_path):
    counts = peer.lay_out_small_split(omniglot_root, tmp_path / "omniglot")
    assert counts == {"train": 136, "test": 106}
    train = tmp_path / "omniglot" / "train"
    alphabets = sorted(p.name for p in train.iterdir())
    assert alphabets == ["Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Cyrillic", "Greek", "Latin"] or len(alphabets) == 5
    chars = [c for a in train.iterdir() for c in a.iterdir()]
    assert len(chars) == 136 and all(c.name.startswith("character") and len(list(c.glob("*.png"))) == 20 for c in chars)
    test_alphabets = {p.name for p in (tmp_path / "omniglot" / "test").iterdir()}
    assert not test_alphabets & set(alphabets)  # unseen alphabets only


def test_a_timing_runs_output_is_parsed_and_bad_output_is_refused():
    out = "2026 tensorflow chatter\n" + json.dumps({"implementation": "official", "threads": 1, "wall_s": [0.1, 0.2],
                                                    "cpu_s": [0.1, 0.15], "peak_rss_bytes": 1}) + "\n"
    assert timing.parse(out)["cpu_s"] == [0.1, 0.15]
    with pytest.raises(peer.PeerError, match="printed no result"):
        timing.parse("Traceback: boom\n")
    with pytest.raises(peer.PeerError, match="no per-iteration times"):
        timing.parse(json.dumps({"wall_s": []}))


def run_result(med, threads, malloc="glibc"):
    return {"threads": threads, "cpu_s": [med] * 3, "wall_s": [med] * 3, "peak_rss_bytes": 10 ** 8, "malloc": malloc}


def test_rounds_become_same_round_ratios_per_malloc_and_schema_rows():
    times = (0.10, 0.12, 0.09, 0.08, 0.06, 0.05)
    rounds = {m: [{f"{w}/{t}": run_result(med, t, m) for (w, t), med in zip(peer.CONTENDERS, times)}]
              for m in ("glibc", "tcmalloc")}
    summary = timing.summary(rounds)
    assert summary["glibc"]["ratio_median"]["reference/1"] == pytest.approx(1.2)
    assert summary["tcmalloc"]["ratio_median"]["batched/0"] == pytest.approx(0.625)
    full = {"iters": 3, "mallocs": summary,
            "versions": {"official": "tensorflow 2.21.0", "reference": "torch", "batched": "torch"}}
    rows = peer.rows_for(full, {"git_commit": "a" * 40, "git_dirty": False}, "test")
    assert len(rows) == 12 and all(check_row(r) is None for r in rows)
    assert {r["backend"] for r in rows} == {"official-tf", "reference", "batched"}
    assert sum(r["device"].endswith(", tcmalloc)") for r in rows) == 6 and len({r["config_hash"] for r in rows}) == 12


def test_both_sides_get_the_same_malloc(monkeypatch):
    import ctypes.util

    from benchmarks.records.mallocs import malloc_name
    from benchmarks.running import allocator

    monkeypatch.setenv("LD_PRELOAD", "/opt/libjemalloc.so.2:libmine.so")
    env = timing.side_env("glibc")  # as glibc ships: no malloc preloaded, thresholds left alone on our side too
    assert env["LD_PRELOAD"] == "libmine.so" and env[allocator.ENV] == "default" and env[allocator.MALLOC_ENV] == "glibc"
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libtcmalloc_minimal.so.4" if "tcmalloc" in name else None)
    monkeypatch.setattr(sys, "platform", "linux")
    assert timing.malloc_settings() == ["glibc", "tcmalloc"]
    env = timing.side_env("tcmalloc")  # the TensorFlow process and ours alike
    assert [malloc_name(e) for e in env["LD_PRELOAD"].split(":")] == ["tcmalloc", None]


def test_a_round_whose_processes_ran_another_malloc_is_refused(monkeypatch):
    monkeypatch.setattr(timing, "run", lambda cmd, env, what: run_result(0.1, 1, "glibc"))
    monkeypatch.setattr(timing, "side_env", lambda setting: {})
    with pytest.raises(peer.PeerError, match="not all with tcmalloc"):
        timing.measure(1, ["tcmalloc"], lambda who, threads: [], "training", log=lambda *a: None)


def test_tensorflow_that_does_not_import_is_a_clear_message(tmp_path):
    with pytest.raises(peer.PeerError, match="TensorFlow does not import with"):
        peer.peer_python(tmp_path / "env", sys.executable)  # this project's interpreter: no TensorFlow


def test_the_cli_exits_2_with_the_message(tmp_path, capsys):
    assert peer.main(["--checkout", str(tmp_path / "nothing"), "--out", str(tmp_path / "results")]) == 2
    assert "no checkout at" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("what", [["train", "--backend", "reference", "--iters", "3", "--warmup", "1"],
                                  ["eval", "--evaluator", "serial", "--tasks", "2", "--repeats", "1"],
                                  ["eval", "--evaluator", "batched", "--tasks", "2", "--repeats", "1"]])
def test_our_side_prints_one_timing_the_harness_parses(omniglot_root, monkeypatch, what):
    import subprocess

    env = {**__import__("os").environ, "OMNIGLOT_ROOT": str(omniglot_root)}
    p = subprocess.run([sys.executable, "-m", "benchmarks.peers.ours", *what, "--threads", "1"],
                       cwd=peer.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    result = timing.parse(p.stdout)
    assert result["threads"] == 1 and len(result["cpu_s"]) == (3 if what[0] == "train" else 1)
    assert all(t > 0 for t in result["wall_s"] + result["cpu_s"])


def test_evaluation_rounds_are_rendered_beside_the_training_rounds(tmp_path):
    from benchmarks.reporting.against_official import peer_lines

    train = timing.summary({"glibc": [{f"{w}/{t}": run_result(0.1, t) for w, t in peer.CONTENDERS}]})
    evals = timing.summary({"glibc": [{f"{w}/{t}": run_result(m, t) for (w, t), m in
                                       zip(peer.EVAL_CONTENDERS, (0.40, 0.50, 0.30, 0.35, 0.30, 0.20))}]})
    assert evals["glibc"]["rounds"][0]["ratio_to_official"]["reference/1"] == pytest.approx(1.25)
    report = {"iters": 3, "warmup": 1, "cpu": "cpu", "setting": "Omniglot", "mallocs": train,
              "eval": {"tasks": 20, "repeats": 3, "setting": "5-way 1-shot", "mallocs": evals}}
    (tmp_path / "peers").mkdir()
    (tmp_path / "peers" / "official_reptile.json").write_text(json.dumps(report))
    text = "\n".join(peer_lines(tmp_path, str))
    assert "Per evaluation task (5-way 1-shot" in text and "glibc's malloc (as it ships) on both sides:" in text
    assert "this project, task by task, 1 thread" in text and "500 ms (×1.25)" in text
    assert "| median of" not in text  # one round: nothing to take the median of
    assert "Medians of the same-round ratios (this project ÷ the authors' code): glibc's malloc" in text
    assert peer.main(["--checkout", ".", "--eval-tasks", "1"]) == 2  # one task is no timing of a task


def test_several_rounds_end_with_the_median_of_their_same_round_ratios(tmp_path):
    from benchmarks.reporting.against_official import peer_lines

    # reference/1 against official/1 per round: x0.50, x1.00, x0.90 -> the row says x0.90, the median of the
    # same-round ratios, not x0.80, the ratio of the median times (80 / 100 ms), which mixes rounds
    times = [(0.100, 0.050), (0.080, 0.080), (0.200, 0.180)]
    summary = timing.summary({"glibc": [{f"{w}/{t}": run_result(ours if w == "reference" else official, t)
                                         for w, t in peer.CONTENDERS} for official, ours in times]})
    report = {"iters": 3, "warmup": 1, "cpu": "cpu", "setting": "Omniglot", "mallocs": summary}
    (tmp_path / "peers").mkdir()
    (tmp_path / "peers" / "official_reptile.json").write_text(json.dumps(report))
    lines = peer_lines(tmp_path, str)
    last = next(line for line in lines if line.startswith("| median of 3 rounds"))
    cells = [c.strip() for c in last.strip("|").split("|")]
    keys = list(summary["glibc"]["median_s"])
    assert cells[1 + keys.index("official/1")] == "100 ms"
    assert cells[1 + keys.index("reference/1")] == "80 ms (×0.90)"
