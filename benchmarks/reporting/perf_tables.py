"""The performance tables of ``docs/performance.md``: pure functions of the perf JSON files under ``results/``.

``limits_lines`` (``results/limits/*.json``, ``benchmarks.perf.limits``), ``eval_lines`` (``results/eval/*.json``,
``benchmarks.perf.eval_throughput``), ``distributed_lines`` (``results/distributed/*.json``,
``benchmarks.perf.data_parallel``) and ``perf_lines`` (``results/perf/*.json``, pytest-benchmark); each line names
its device. ``benchmarks.reporting.readme`` places them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from benchmarks.reporting import against_official


def link(target: Path, document: Path) -> str:
    rel = Path(os.path.relpath(target, document.parent)).as_posix()
    return f"[{rel}]({rel})"


def duration(seconds: float) -> str:
    seconds = float(f"{seconds:.3g}")  # round first, so 0.99999 s reads 1.00 s, not 1000 ms
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{_three_digits(seconds / scale)} {unit}"
    return f"{_three_digits(seconds / 1e-9)} ns"


def _three_digits(x: float) -> str:
    """Three significant digits, trailing zeros kept (1.00, 12.3, 152), unlike ``:.3g``."""
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}" if x > 0 else "0"


def perf_lines(perf_dir: Path, document: Path) -> list[str]:
    """A Markdown table of every benchmark in ``perf_dir/*.json``; [] if there is none."""
    lines = []
    for path in sorted(perf_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            benches = data["benchmarks"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not pytest-benchmark JSON ({e}); regenerate it with `make perf`") from e
        cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw") or data.get("machine_info", {}).get(
            "processor") or "unknown CPU"
        commit = (data.get("commit_info") or {}).get("id", "")[:12] or "unknown"
        for b in benches:
            # A benchmark that ran on a GPU says so in extra_info; otherwise it ran on the machine's CPU.
            device = (b.get("extra_info") or {}).get("device") or f"cpu: {cpu}"
            s = b["stats"]
            lines.append(f"| {b['name']} | {duration(s['median'])} | {duration(s['iqr'])} | {s['rounds']} "
                         f"| {device} | {commit} | {link(path, document)} |")
    if not lines:
        return []
    return ["| Benchmark | Median | IQR | Rounds | Device | Git commit | File |", "|---|---|---|---|---|---|---|"] + lines


def limits_lines(limits_dir: Path, document: Path) -> list[str]:
    """Meta-step time over its forward/backward floor, from ``limits_dir/*.json`` (``python -m benchmarks.perf.limits --json``)."""
    lines, mem, comp = [], [], []
    official = against_official.official_median(limits_dir.parent)
    for path in sorted(limits_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            device, timings, memory = data["device"], data["timings"], data["memory"]
            # Older reports carry no clock; the benchmark then used these two.
            clock = data.get("clock") or ("wall time" if device.startswith("cuda") else "thread CPU time")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not `benchmarks.perf.limits --json` output ({e}); regenerate it with `make perf`") from e
        for setting, med in timings.items():
            floor, ref = med["floor (loop)"]["median"], med["reference"]["median"]
            for name, t in med.items():
                if name.startswith("floor"):
                    continue
                sampling = name.startswith("sampling")
                ratio = "—" if sampling else f"×{t['median'] / floor:.2f}"
                vs_ref = "—" if sampling or name == "reference" else f"×{ref / t['median']:.2f}"
                vs_tf = (f"×{t['median'] / official:.2f}" if official and setting == "reptile" and not sampling
                         and "(1 thread" in device else "—")
                lines.append(f"| {setting} | {name} | {duration(t['median'])} | {ratio} | {vs_ref} | {vs_tf} | {clock} "
                             f"| {device} | {link(path, document)} |")
        for setting, med in (data.get("compile") or {}).items():
            gain = f"×{med['batched']['median'] / med['batched+compile']['median']:.2f}" if "batched+compile" in med else "failed"
            compiled = duration(med["batched+compile"]["median"]) if "batched+compile" in med else "—"
            comp.append(f"| {setting} | {duration(med['batched']['median'])} | {compiled} | {gain} | {device} |")
        for steps, m in memory.items():
            ref = m["reference"]
            mem.append(f"| {steps} | " + " | ".join(f"{m[k] / 2**20:.1f} MiB" for k in ("reference", "batched", "batched-unrolled"))
                       + f" | ×{m['batched'] / ref:.2f} | {device} |")
    if not lines:
        return []
    out = ["| Setting | Implementation | Median per meta-step | ÷ floor (bare forward/backward, task by task) "
           "| speed-up over reference | ÷ authors' TF code (1 thread) | Clock | Device | File |",
           "|---|---|---|---|---|---|---|---|---|", *lines]
    if official:
        out += ["", "÷ authors' TF code: against the median meta-iteration of openai/supervised-reptile measured by "
                "`make peer-official-reptile` (which includes task sampling; these rows do not), Reptile only."]
    if any("*" in line.split("|")[2] for line in lines):
        out += ["", "\\* torch.func with `vmap` over tasks gives wrong second derivatives through batch norm "
                "(`tests/test_func_maml.py`); it is timed only to show what vmap would buy."]
    if comp:
        out += ["", "torch.compile of the batched learners' forward (first order; `benchmarks.perf.limits --compile`):", "",
                "| Setting | batched | batched + torch.compile | speed-up | Device |", "|---|---|---|---|---|", *comp]
    if mem:
        out += ["", "Second-order MAML memory (CPU: autograd saved-tensor bytes; CUDA: allocator peak):", "",
                "| Inner steps | higher (reference) | batched (HVP chain) | batched (unrolled) | batched ÷ higher | Device |",
                "|---|---|---|---|---|---|", *mem]
    return out


def eval_lines(eval_dir: Path, document: Path) -> list[str]:
    """Evaluation throughput (batched vs serial) and float32 agreement, from ``benchmarks.perf.eval_throughput``."""
    out = []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not `benchmarks.perf.eval_throughput --json` output ({e})") from e
        if "per_protocol" in data:
            out += ["", f"Evaluation throughput, tasks per second (5-way 1-shot, {data['device']}, {link(path, document)}):", "",
                    "| Protocol | Evaluator | Tasks per second | × serial |", "|---|---|---|---|"]
            for protocol, contenders in data["per_protocol"].items():
                out += [f"| {protocol} | {name} | {v['tasks_per_s']:.1f} | ×{v['vs_serial']:.2f} |" for name, v in contenders.items()]
        if "settings" in data:
            out += ["", f"Batched against serial evaluation in float32 on the default suite's pools (600 tasks, a "
                    f"randomly initialised network; {data['device']}, {link(path, document)}):", "",
                    "| Setting, evaluator | Tasks with another score | Predictions changed (at least) |", "|---|---|---|"]
            out += [f"| {k} | {v['tasks_changed']} / 600 | {v['predictions_changed_at_least']} / {v['predictions']} |"
                    for k, v in data["settings"].items()]
    return out[1:] if out else []


def distributed_lines(folder: Path, document: Path) -> list[str]:
    """Data-parallel meta-steps per second against one rank (``benchmarks.perf.data_parallel``)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            results = data["results"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path} is not `benchmarks.perf.data_parallel --json` output ({e})") from e
        out += [f"One training split over torchrun ranks ({data['setting']}; {data['device']} per rank; "
                f"{data['allreduce_bytes_per_step'] / 1e3:.0f} kB all-reduced per meta-step; {link(path, document)}):", "",
                "| Ranks | Median meta-step | Meta-steps per second | × one rank |", "|---|---|---|---|"]
        out += [f"| {n} | {duration(r['step_s_median'])} | {r['steps_per_s']:.2f} | ×{r['speedup']:.2f} |"
                for n, r in results.items()]
    return out
