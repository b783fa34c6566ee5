"""The generated blocks of README.md and docs/*.md: replaced between their markers, idempotent, --check, clear errors.

Run: .venv/bin/python -m pytest -q tests/test_readme.py   (uses a temporary README and docs, never the real ones)
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.reporting import readme, tables
from test_tables import REPO, fake_row, write_suite

BEFORE = "# Project\n\nIntro text.\n\n## Results\n\n"
AFTER = "\n## Licence\n\nMIT\n"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.reporting.readme", *args], cwd=REPO, capture_output=True,
                          text=True)


def stale(block: str) -> str:
    start, end = readme.markers(block)
    return f"{BEFORE}{start}\nstale text\n{end}{AFTER}"


def section(path, block: str) -> str:
    start, end = readme.markers(block)
    text = path.read_text()
    assert text.startswith(BEFORE + start) and text.endswith(end + AFTER)
    return text.split(start)[1].split(end)[0]


@pytest.fixture
def project(tmp_path):
    """A root with README.md and docs/{performance,peers}.md (stale blocks) and a results folder."""
    res = tmp_path / "results"
    write_suite(res, "default", [fake_row(cell="omni-reptile", split="small", metric_mean=91.5, metric_ci95=0.8)])
    tables.main(res, published=REPO / "results" / "reference" / "published.csv")
    (res / "plots").mkdir()
    (res / "plots" / "scaling-cpu-x.png").write_bytes(b"png")
    (res / "plots" / readme.FRONT_PLOT).write_bytes(b"png")
    (res / "perf").mkdir()
    # Shape of pytest-benchmark's --benchmark-json output (only the fields readme.py reads; invented timings).
    (res / "perf" / "cpu.json").write_text(json.dumps({
        "machine_info": {"cpu": {"brand_raw": "Test CPU 3000"}}, "commit_info": {"id": "b" * 40},
        "benchmarks": [{"name": "test_meta_step[maml]", "stats": {"median": 0.0123, "iqr": 0.0004, "rounds": 7},
                        "extra_info": {}},
                       {"name": "test_meta_step_gpu", "stats": {"median": 2.5e-5, "iqr": 1e-6, "rounds": 100},
                        "extra_info": {"device": "cuda: Test GPU"}}]}))
    (tmp_path / "docs").mkdir()
    for name, block in readme.DOCUMENTS.items():
        (tmp_path / name).write_text(stale(block))
    return tmp_path, res


def test_blocks_replaced_idempotently(project):
    root, res = project
    assert readme.update_all(root, res) == [root / name for name in readme.DOCUMENTS]  # all three changed
    front = section(root / "README.md", "results")
    assert "stale text" not in front
    assert "| omni-reptile | reptile | reference | omniglot/small 5-way 1-shot non-transductive | accuracy % | 91.50 ± 0.80 |" in front
    assert "[results/tables/paper_tables.md](results/tables/paper_tables.md)" in front
    # The measured comparison (gradient order / memory / time / accuracy) is embedded, legend included.
    # (the fixture has no scaling rows, so the embedded section says so instead of showing a table)
    assert "#### Gradient order, memory and time per meta-step" in front and "_no scaling-sweep rows" in front
    assert "Growth per inner step: slope" in front and "## Sine regression" not in front
    assert "[results/plots/scaling-cpu-x.png](results/plots/scaling-cpu-x.png)" in front
    assert f"![Periodic evaluation during training, default suite](results/plots/{readme.FRONT_PLOT})" in front
    assert "test_meta_step" not in front  # the performance tables live on their own page
    perf = section(root / "docs" / "performance.md", "performance")
    # Links are relative to the page that holds them.
    assert "[../results/perf/cpu.json](../results/perf/cpu.json)" in perf
    assert "| test_meta_step[maml] | 12.3 ms | 400 µs | 7 | cpu: Test CPU 3000 | bbbbbbbbbbbb |" in perf
    assert "| test_meta_step_gpu | 25.0 µs | 1.00 µs | 100 | cuda: Test GPU |" in perf
    assert "No peer results yet" in section(root / "docs" / "peers.md", "peers")
    texts = {name: (root / name).read_text() for name in readme.DOCUMENTS}
    assert readme.update_all(root, res) == []  # second run: nothing to do
    assert {name: (root / name).read_text() for name in readme.DOCUMENTS} == texts


def test_check_flag_reports_out_of_date_without_writing(project):
    root, res = project
    before = {name: (root / name).read_text() for name in readme.DOCUMENTS}
    proc = run_cli("--root", str(root), "--results-dir", str(res), "--check")
    assert proc.returncode == 1 and "out of date" in proc.stderr and "docs/peers.md" in proc.stderr
    assert {name: (root / name).read_text() for name in readme.DOCUMENTS} == before
    assert run_cli("--root", str(root), "--results-dir", str(res)).returncode == 0
    assert run_cli("--root", str(root), "--results-dir", str(res), "--check").returncode == 0


def test_missing_markers_fail_clearly_and_no_document_is_written(project):
    root, res = project
    (root / "docs" / "peers.md").write_text(BEFORE + AFTER)
    proc = run_cli("--root", str(root), "--results-dir", str(res))
    assert proc.returncode == 2 and readme.markers("peers")[0] in proc.stderr and "peers.md" in proc.stderr
    assert (root / "docs" / "peers.md").read_text() == BEFORE + AFTER
    assert (root / "README.md").read_text() == stale("results")  # rendered, but not written: one failed
    (root / "docs" / "peers.md").unlink()
    proc = run_cli("--root", str(root), "--results-dir", str(res))
    assert proc.returncode == 2 and "no " in proc.stderr and "pass --root" in proc.stderr


@pytest.mark.parametrize("broken", ["peers/official_reptile.json", "backends/correctness.json"])
def test_a_broken_results_json_is_named_and_the_readme_is_left_alone(project, broken):
    root, res = project
    before = {name: (root / name).read_text() for name in readme.DOCUMENTS}
    (res / broken).parent.mkdir(parents=True, exist_ok=True)
    (res / broken).write_text('{"median_s": ')  # cut short
    proc = run_cli("--root", str(root), "--results-dir", str(res))
    assert proc.returncode == 2 and f"{broken} is not readable JSON" in proc.stderr and "regenerate it" in proc.stderr
    assert {name: (root / name).read_text() for name in readme.DOCUMENTS} == before


def test_limits_table_names_device_and_ratio_to_floor(tmp_path):
    """`benchmarks.perf.limits --json` output becomes a table of time / floor, with its device on every line."""
    results = tmp_path / "results"
    (results / "limits").mkdir(parents=True)
    report = {"device": "cpu: Test CPU (1 thread)", "timings": {"reptile": {
        "reference": {"median": 0.150, "min": 0.14}, "batched": {"median": 0.125, "min": 0.12},
        "floor (loop)": {"median": 0.100, "min": 0.09}, "floor (batched)": {"median": 0.1, "min": 0.09}}},
        "memory": {"5": {"reference": 40 * 2**20, "batched": 10 * 2**20, "batched-unrolled": 40 * 2**20}}}
    (results / "limits" / "cpu.json").write_text(json.dumps(report))
    from benchmarks.reporting.perf_tables import limits_lines

    lines = limits_lines(results / "limits", tmp_path / "README.md")
    text = "\n".join(lines)
    assert "| reptile | reference | 150 ms | ×1.50 | — | — | thread CPU time | cpu: Test CPU (1 thread) |" in text
    assert "| reptile | batched | 125 ms | ×1.25 | ×1.20 |" in text  # 150 / 125 faster than the reference
    assert "wrong second derivatives" not in text  # the vmap footnote only comes with a vmap row
    assert "floor (loop)" not in text  # the floor is the denominator, not a row
    assert "| 5 | 40.0 MiB | 10.0 MiB | 40.0 MiB | ×0.25 | cpu: Test CPU (1 thread) |" in text
    assert "torch.compile" not in text  # no compile pass in this report, no compile table
    # With the authors' code measured, Reptile rows get its time as an anchor.
    (results / "peers").mkdir()
    (results / "peers" / "official_reptile.json").write_text(
        json.dumps({"mallocs": {"glibc": {"median_s": {"official/1": 0.100}}}}))  # glibc's: the limit benchmark's
    text = "\n".join(limits_lines(results / "limits", tmp_path / "README.md"))
    assert "| reptile | reference | 150 ms | ×1.50 | — | ×1.50 | thread CPU time |" in text
    assert "| reptile | batched | 125 ms | ×1.25 | ×1.20 | ×1.25 |" in text
    report["compile"] = {"reptile": {"batched": {"median": 0.125, "min": 0.12}, "batched+compile": {"median": 0.1, "min": 0.1}},
                         "fomaml-1": {"batched": {"median": 0.2, "min": 0.2}}}  # its compilation failed
    (results / "limits" / "cpu.json").write_text(json.dumps(report))
    text = "\n".join(limits_lines(results / "limits", tmp_path / "README.md"))
    assert "| reptile | 125 ms | 100 ms | ×1.25 | cpu: Test CPU (1 thread) |" in text
    assert "| fomaml-1 | 200 ms | — | failed |" in text
    (results / "limits" / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="make perf"):
        limits_lines(results / "limits", tmp_path / "README.md")


def test_durations_keep_three_significant_digits():
    from benchmarks.reporting.perf_tables import duration

    assert [duration(s) for s in (1.0023, 0.99999, 0.1523, 4e-4, 2e-9)] == ["1.00 s", "1.00 s", "152 ms", "400 µs", "2.00 ns"]
