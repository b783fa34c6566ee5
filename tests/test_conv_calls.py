"""The convolution-call benchmark (benchmarks/perf/conv_calls.py): it reads oneDNN's verbose lines right, runs end
to end, and renders its README table. Times are meaningless here (two calls per case); ``make perf`` makes the
committed ones.

    .venv/bin/python -m pytest -q tests/test_conv_calls.py
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.perf import conv_calls
from benchmarks.reporting.against_official import conv_calls_lines

FAKE = """\
case,batch 5, layer 2, forward
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32 dst:f32,,64x64x3x3,0.010
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,mb5,0.090
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32 dst:f32,,64x64x3x3,0.012
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,mb5,0.400
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32 dst:f32,,64x64x3x3,0.011
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,mb5,0.095
onednn_verbose,v1,info,something else,0.5
case,batch 5, layer 3, forward
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,mb5,0.030
"""


def test_verbose_lines_give_the_median_call_and_its_primitives():
    out = conv_calls.kernel_times(FAKE, calls=3)
    layer2 = out["batch 5, layer 2, forward"]
    assert layer2["kernels_s"] == pytest.approx(0.106e-3)  # calls of 0.100, 0.412 and 0.106 ms: the median
    assert layer2["primitives"] == {"reorder": 1, "convolution": 1}
    assert out["batch 5, layer 3, forward"]["kernels_s"] is None  # 1 line for 3 calls: not one call's worth


def test_bad_counts_exit_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        conv_calls.main(["--calls", "0"])
    assert e.value.code == 2 and "--calls" in capsys.readouterr().err


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_it_runs_end_to_end_and_the_readme_renders_it(tmp_path, restore_threads):
    conv_calls.main(["--calls", "2", "--rounds", "1", "--json", str(tmp_path / "profile" / "conv_calls_cpu.json")])
    report = json.loads((tmp_path / "profile" / "conv_calls_cpu.json").read_text())
    assert len(report["cases"]) == 16 and set(report["per_inner_step"]) == {"5", "10"}
    for case in report["cases"].values():
        assert case["call_s"] > 0 and case["kernels_s"] > 0 and case["primitives_per_call"]["convolution"] >= 1
    lines = conv_calls_lines(tmp_path, lambda p: p.name)
    assert lines and sum(line.startswith("| batch") for line in lines) == 18
