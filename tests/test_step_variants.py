"""The meta-step variants benchmark runs end to end, says which variants keep the numbers, and renders.

One round of one meta-step per variant (times are meaningless here; ``make perf`` produces the committed
ones). A few seconds on the 2-core CPU.

    .venv/bin/python -m pytest -q tests/test_step_variants.py
"""
from __future__ import annotations

import json

import pytest

from benchmarks.perf import step_variants
from benchmarks.reporting.against_official import variants_lines


def test_variants_json_names_which_keep_the_numbers_and_the_readme_renders_them(tmp_path, restore_threads):
    step_variants.main(["--rounds", "1", "--steps", "1", "--json", str(tmp_path / "profile" / "step_variants_cpu.json")])
    report = json.loads((tmp_path / "profile" / "step_variants_cpu.json").read_text())
    variants = report["variants"]
    assert set(variants) == {"as run", "autograd", "foreach Adam", "contiguous", "before", "oneDNN off", "compiled step"}
    assert "error" not in variants["compiled step"], variants["compiled step"]  # Inductor compiles here
    assert variants["as run"]["max_param_diff_vs_as_run"] == 0.0
    assert variants["autograd"]["max_param_diff_vs_as_run"] == 0.0  # the handwritten step keeps autograd's bits
    assert all(v["step_s_median"] > 0 and len(v["ratio_to_as_run_rounds"]) == 1 and v["warmup_s"] > 0
               for v in variants.values())
    # The previous choices and compiled kernels round float32 differently: the report must say the numbers moved.
    for name in ("foreach Adam", "contiguous", "before", "compiled step"):
        assert variants[name]["max_param_diff_vs_as_run"] > 0, name
    lines = variants_lines(tmp_path, lambda p: str(p))
    assert "yes (bit-identical)" in next(line for line in lines if line.startswith("| as run |"))
    assert "no (parameters differ" in next(line for line in lines if line.startswith("| before |"))
    assert variants_lines(tmp_path / "nothing", str) == []


def test_a_variant_that_cannot_run_is_reported_and_the_others_timed(tmp_path, monkeypatch, restore_threads):
    def broken(learner):
        def context():
            raise RuntimeError("no C++ compiler found")
        return context

    monkeypatch.setattr(step_variants, "VARIANTS", {"as run": step_variants.VARIANTS["as run"], "broken": broken})
    step_variants.main(["--rounds", "1", "--steps", "1", "--json", str(tmp_path / "profile" / "step_variants_cpu.json")])
    variants = json.loads((tmp_path / "profile" / "step_variants_cpu.json").read_text())["variants"]
    assert variants["broken"] == {"error": "RuntimeError: no C++ compiler found"}
    assert variants["as run"]["step_s_median"] > 0
    assert any(line.startswith("| broken | failed: RuntimeError: no C++ compiler found") for line in variants_lines(tmp_path, str))


@pytest.mark.parametrize("flag", ["--rounds", "--steps"])
def test_fewer_than_one_round_or_step_is_refused(flag, capsys):
    with pytest.raises(SystemExit) as e:
        step_variants.main([flag, "0"])
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
