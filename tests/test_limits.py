"""The limit benchmark runs end to end and writes the JSON the README's performance section reads.

One repeat of the cheapest second-order setting (timings are meaningless at one
repeat; ``make perf`` produces the committed numbers). ~20 s on the 2-core CPU.

    .venv/bin/python -m pytest -q tests/test_limits.py
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.perf import limits
from benchmarks.reporting.perf_tables import limits_lines


@pytest.mark.parametrize("threads, clock, skip_memory", [(1, "thread CPU time", []), (2, "wall time", ["--no-memory"])])
def test_maml_limits_json_and_readme_table(tmp_path, threads, clock, skip_memory):
    before = torch.get_num_threads()
    try:
        limits.main(["--only", "maml-1", "--repeats", "1", "--threads", str(threads), *skip_memory,
                     "--json", str(tmp_path / "limits" / "cpu.json")])
    finally:
        torch.set_num_threads(before)
    report = json.loads((tmp_path / "limits" / "cpu.json").read_text())
    timings = report["timings"]["maml-1"]
    expected = {"reference", "batched", "batched (grouped)", "batched-unrolled", "torch.func", "torch.func vmap*",
                "floor (loop)", "floor (batched)"}
    from algorithms.libraries import LibraryMissing, check_available

    for library in ("learn2learn", "torchopt"):
        try:
            check_available(library)
            expected.add(library)
        except LibraryMissing:
            pass
    assert set(timings) == expected
    assert all(t["median"] > 0 and t["min"] <= t["median"] for t in timings.values())
    assert report["repeats"] == {"maml-1": 1} and report["device"].startswith("cpu")
    # Thread CPU time would miss the work of the other intra-op threads.
    assert report["clock"] == clock and report["device"].endswith(f"({threads} thread{'s' if threads > 1 else ''})")
    text = "\n".join(limits_lines(tmp_path / "limits", tmp_path / "README.md"))
    mem = report["memory"]
    if skip_memory:
        assert mem == {} and "Second-order MAML memory" not in text
    else:  # autograd memory: the HVP chain stays flat in K, higher's grows
        assert mem["10"]["batched"] == mem["5"]["batched"] < mem["5"]["reference"] < mem["10"]["reference"]
    assert "| maml-1 | torch.func vmap* |" in text and "wrong second derivatives" in text
    assert not list((tmp_path / "limits").glob(".*"))  # the atomic writer left no temporary file


@pytest.mark.parametrize("args, message", [(["--threads", "0"], "--threads 0: give 1 or more"),
                                           (["--repeats", "0"], "--repeats 0: give 1 or more")])
def test_bad_counts_are_refused(args, message):
    with pytest.raises(SystemExit, match=message):
        limits.main(args)
