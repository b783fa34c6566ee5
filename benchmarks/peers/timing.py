"""Same-round timing of an authors' code against this project's, on equal terms: both sides with the same malloc.

Used by ``benchmarks.peers.official_reptile`` and ``benchmarks.peers.official_maml``. Every round runs every
contender (the authors' code, this project's reference and batched backends; 1 thread and each library's
default threads) once per malloc setting, each in a fresh process, so the ratios of one round compare runs
minutes apart on the same machine:

- ``glibc``: both sides with glibc's malloc as it ships (no malloc preloaded; this project's processes told to
  leave glibc's thresholds alone, ``REPTILE_BENCH_ALLOCATOR=default``, as the TensorFlow process leaves them);
- ``tcmalloc`` (where installed): tcmalloc preloaded into both sides' processes.

Each process reports the malloc it found mapped into itself, so a report says what ran, not what was asked.
1 thread is timed in process CPU time (the machine's other load left out), default threads in wall time.
"""
from __future__ import annotations

import os
import statistics
import subprocess
from typing import Callable

from benchmarks.peers.tf_env import REPO, TF_ENV, PeerError, parse_last_json
from benchmarks.records.mallocs import malloc_name

CLOCKS = {"1": "process CPU time", "0": "wall time"}
CONTENDERS = [("official", 1), ("reference", 1), ("batched", 1), ("official", 0), ("reference", 0), ("batched", 0)]
"""(who, torch or TensorFlow threads; 0: the library's default) of one round, in the order they run."""


def malloc_settings() -> list[str]:
    """``glibc``, and ``tcmalloc`` where the system has it."""
    from benchmarks.running.allocator import MALLOC_ENV, preload_library

    found = preload_library({MALLOC_ENV: "auto"})
    return ["glibc", *(["tcmalloc"] if found and malloc_name(found) == "tcmalloc" else [])]


def side_env(setting: str) -> dict[str, str]:
    """The environment of a timed process of either side under ``setting`` (see the module docstring)."""
    from benchmarks.running.allocator import ENV, MALLOC_ENV, malloc_env, preload_entries

    env = {**os.environ, "PYTHONPATH": str(REPO), **TF_ENV}
    others = [e for e in preload_entries(env) if not malloc_name(e)]  # no inherited malloc on either side
    env.pop("LD_PRELOAD", None)
    if others:
        env["LD_PRELOAD"] = ":".join(others)
    if setting == "glibc":
        return {**env, ENV: "default", MALLOC_ENV: "glibc"}
    return malloc_env({**env, MALLOC_ENV: "auto"})


def parse(stdout: str) -> dict:
    """The timing a run printed last; PeerError without per-iteration (or per-repeat) times."""
    data = parse_last_json(stdout)
    if not data.get("wall_s") or len(data["wall_s"]) != len(data.get("cpu_s", [])):
        raise PeerError(f"a timing run printed no per-iteration times: {str(data)[:200]}")
    return data


def run(cmd: list[str], env: dict[str, str], what: str) -> dict:
    """One timing process, parsed."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise PeerError(f"the {what} run failed (exit {p.returncode}):\n{p.stderr.strip()[-1500:]}")
    return parse(p.stdout)


def median_step(result: dict) -> float:
    """1 thread: process CPU time (the machine's other load left out); default threads: wall time."""
    return statistics.median(result["cpu_s"] if result["threads"] == 1 else result["wall_s"])


def rounds_report(rounds: list[dict[str, dict]]) -> list[dict]:
    """Per round: each contender's median step and its ratio to the official code at the same threads."""
    out = []
    for r in rounds:
        med = {k: median_step(v) for k, v in r.items()}
        ratios = {k: med[k] / med[f"official/{k.split('/')[1]}"] for k in med if not k.startswith("official")}
        out.append({"median_s": med, "ratio_to_official": ratios})
    return out


def measure(rounds: int, settings: list[str], command: Callable[[str, int], list[str]], label: str,
            log=print) -> dict[str, list[dict[str, dict]]]:
    """{malloc setting: [{"who/threads": result} per round]}; ``command(who, threads)`` is one run's command."""
    out: dict[str, list[dict[str, dict]]] = {s: [] for s in settings}
    for r in range(rounds):
        for setting in settings:
            env = side_env(setting)
            results = {f"{who}/{threads}": run(command(who, threads), env, f"{who} {label} ({threads or 'default'} "
                                                                           f"threads, {setting})")
                       for who, threads in CONTENDERS}
            seen = {k: v.get("malloc", "?") for k, v in results.items()}
            if set(seen.values()) != {setting}:
                raise PeerError(f"round {r + 1}, {setting}: the processes ran with {seen}, not all with {setting}")
            out[setting].append(results)
            report = rounds_report([results])[0]
            log(f"round {r + 1}, {label}, {setting} on both sides: "
                + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in report["median_s"].items()))
            log("  same-round ratio to the official code: "
                + ", ".join(f"{k} x{v:.2f}" for k, v in report["ratio_to_official"].items()))
    return out


def summary(per_setting: dict[str, list[dict[str, dict]]]) -> dict[str, dict]:
    """Per malloc setting: every round's medians and ratios, the medians over rounds, the peak memory."""
    out = {}
    for setting, rounds in per_setting.items():
        per_round = rounds_report(rounds)
        keys = list(per_round[0]["median_s"])
        out[setting] = {
            "rounds": per_round,
            "median_s": {k: statistics.median(r["median_s"][k] for r in per_round) for k in keys},
            "ratio_median": {k: statistics.median(r["ratio_to_official"][k] for r in per_round)
                             for k in per_round[0]["ratio_to_official"]},
            "peak_rss_bytes": {k: max(r[k]["peak_rss_bytes"] for r in rounds) for k in keys},
        }
    return out
