"""The meta-step timer's layout comparison runs, forces each layout, and writes same-round ratios.

    .venv/bin/python -m pytest -q tests/test_time_meta_step.py
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.perf import time_meta_step
from benchmarks.reporting.against_official import layouts_lines


@pytest.fixture
def two_settings(monkeypatch):
    chosen = [s for s in time_meta_step.settings() if s.label.startswith(("reptile", "fomaml 1-shot, 1 SGD"))]
    assert len(chosen) == 2
    monkeypatch.setattr(time_meta_step, "settings", lambda backend="reference": chosen)
    return [s.label for s in chosen]


def test_layouts_are_forced_and_compared_round_by_round(two_settings, tmp_path, monkeypatch):
    seen = []
    real = time_meta_step.build_learner

    def spy(config, model, **kw):
        learner = real(config, model, **kw)
        seen.append(learner)
        return learner

    monkeypatch.setattr(time_meta_step, "build_learner", spy)
    before = torch.get_num_threads()
    try:
        time_meta_step.main(["--layouts", "--steps", "1", "--warmup", "0", "--rounds", "2", "--json", str(tmp_path / "l.json")])
    finally:
        torch.set_num_threads(before)
    layouts = [l.model[0].weight.stride(1) == 1 for l in seen]  # channel stride 1: channels-last
    assert layouts == [False, True] * 4  # two settings, two rounds, contiguous first
    report = json.loads((tmp_path / "l.json").read_text())
    assert list(report["settings"]) == two_settings
    for v in report["settings"].values():
        assert len(v["ratio_rounds"]) == 2 and v["ratio_median"] > 0
        assert v["ratio_rounds"][0] == pytest.approx(v["median_s"]["channels-last"][0] / v["median_s"]["contiguous"][0])
    (tmp_path / "profile").mkdir()
    (tmp_path / "l.json").rename(tmp_path / "profile" / "layouts_cpu.json")
    lines = layouts_lines(tmp_path, str)
    assert lines[0].startswith("Weight layouts per reference learner") and len(lines) == 4 + len(two_settings)
    assert layouts_lines(tmp_path / "nothing", str) == []
