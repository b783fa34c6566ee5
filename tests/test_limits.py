"""The limit benchmark runs end to end and writes the JSON the README's performance section reads.

One repeat of the cheapest second-order setting (timings are meaningless at one
repeat; ``make perf`` produces the committed numbers). ~20 s on the 2-core CPU.

    .venv/bin/python -m pytest -q tests/test_limits.py
"""
from __future__ import annotations

import json

import torch

from benchmarks import limits
from benchmarks.readme import limits_lines


def test_maml_limits_json_and_readme_table(tmp_path):
    threads = torch.get_num_threads()
    try:
        limits.main(["--only", "maml-1", "--repeats", "1", "--json", str(tmp_path / "limits" / "cpu.json")])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "limits" / "cpu.json").read_text())
    timings = report["timings"]["maml-1"]
    expected = {"reference", "batched", "batched (grouped)", "batched-unrolled", "torch.func loop", "torch.func vmap*",
                "floor (loop)", "floor (batched)"}
    assert set(timings) == expected
    assert all(t["median"] > 0 and t["min"] <= t["median"] for t in timings.values())
    assert report["repeats"] == {"maml-1": 1} and report["device"].startswith("cpu")
    # Autograd memory: the HVP chain stays flat in K, higher's grows.
    mem = report["memory"]
    assert mem["10"]["batched"] == mem["5"]["batched"] < mem["5"]["reference"] < mem["10"]["reference"]
    text = "\n".join(limits_lines(tmp_path / "limits", tmp_path / "README.md"))
    assert "| maml-1 | torch.func vmap* |" in text and "wrong second derivatives" in text
    assert not list((tmp_path / "limits").glob(".*"))  # the atomic writer left no temporary file
