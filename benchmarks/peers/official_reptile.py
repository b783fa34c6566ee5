"""The authors' Reptile (openai/supervised-reptile, TensorFlow) timed beside this project's, round by round.

    make peer-official-reptile REPTILE_CHECKOUT=/path/to/supervised-reptile      # a clone of the official repo
    python -m benchmarks.peers.official_reptile --checkout PATH [--rounds 3] [--iters 60]

What it does, without touching the checkout or this project's environment:
1. checks that PATH is a checkout of openai/supervised-reptile (its files and the lines it patches);
2. makes a TensorFlow environment of its own (``--env``, default ``.venv-official-reptile``: tensorflow
   2.21.0 + tf-keras, numpy, pillow; large, never the project's venv, never CI), or uses ``--python``;
3. copies the checkout and applies the compatibility changes (``PATCH``: ``tensorflow.compat.v1`` in place
   of ``tensorflow`` and v2 behaviour disabled; no other change), and lays the Omniglot small split out as
   the folders ``alphabet/character/*.png`` the official ``read_dataset`` reads (training characters of
   small1; the official code resizes and rotates them itself);
4. runs, in each round, the official ``Reptile.train_step`` (``official_reptile_driver.py``) and this
   project's Reptile (``reference`` backend with the inner Adam's state kept across tasks, as the official
   code; ``batched`` without it) at the paper's Omniglot 5-way settings (10 shots, 5 inner Adam steps of lr
   0.001 with beta1 = 0 on minibatches of 10, meta-batch 5), task sampling included, at 1 thread (process CPU
   time) and at each library's default threads (wall time), and prints same-round ratios; then, unless
   ``--eval-tasks 0``, the same for one evaluation task: the official ``Reptile.evaluate`` (5-way 1-shot, 50
   Adam steps on minibatches of 5, non-transductive) against this project's evaluator, task by task
   (``serial``) and batched (the default on CPU) (``official_reptile_ours.py`` is this project's side).
   This project's processes preload the malloc its cell processes do (``running.allocator.malloc_env``:
   tcmalloc where installed); the authors' code runs with the environment's (glibc's: with tcmalloc it was
   not faster here); the JSON's ``malloc`` and the rows' device say which;
5. writes ``results/peers/official_reptile.json`` (every round, training and evaluation) and one cost row per
   implementation and thread setting of the training timing to ``results/peer-official-reptile/rows.csv``
   (backend ``official-tf`` for the authors').
Bad input (no checkout, a checkout of something else, TensorFlow that does not install or import, a
failing run) stops with a message; the project's own results are untouched until the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "official_reptile_driver.py"
FILES = ["run_omniglot.py", "supervised_reptile/__init__.py", "supervised_reptile/args.py",
         "supervised_reptile/models.py", "supervised_reptile/omniglot.py", "supervised_reptile/reptile.py",
         "supervised_reptile/train.py", "supervised_reptile/variables.py", "supervised_reptile/eval.py"]
PATCH = [  # (file, line as the official code has it, line as it runs on TensorFlow 2)
    (f, "import tensorflow as tf", "import tensorflow.compat.v1 as tf")
    for f in ("run_omniglot.py", "supervised_reptile/args.py", "supervised_reptile/models.py",
              "supervised_reptile/reptile.py", "supervised_reptile/train.py", "supervised_reptile/variables.py")
] + [("run_omniglot.py", "import tensorflow.compat.v1 as tf", "import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()")]
PACKAGES = ["tensorflow==2.21.0", "tf-keras~=2.21.0", "numpy", "pillow"]
TF_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}  # tf.layers needs tf-keras (Keras 2), not Keras 3
CONTENDERS = [("official", 1), ("reference", 1), ("batched", 1), ("official", 0), ("reference", 0), ("batched", 0)]
EVAL_CONTENDERS = [("official", 1), ("serial", 1), ("batched", 1), ("official", 0), ("serial", 0), ("batched", 0)]
"""Evaluation: the authors' ``Reptile.evaluate`` against this project's evaluator, task by task and batched."""


class PeerError(RuntimeError):
    """The peer run cannot go on; the message says what is wrong and what to do."""


def check_checkout(path: Path) -> None:
    if not path.is_dir():
        raise PeerError(f"no checkout at {path}: clone it with `git clone https://github.com/openai/supervised-reptile "
                        f"{path}` (or pass REPTILE_CHECKOUT=<the folder of your clone>)")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PeerError(f"{path} is not a checkout of openai/supervised-reptile: {', '.join(missing)} missing")
    for file, old, _ in PATCH[:-1]:
        if old not in (path / file).read_text().splitlines():
            raise PeerError(f"{path / file} lacks the line {old!r} this tool patches: another version of the "
                            "official code? (tested with its last commit, 8f2b71c)")


def patch_copy(checkout: Path, dest: Path) -> Path:
    """A patched copy of the checkout's code in ``dest`` (the checkout itself is never modified)."""
    if dest.exists():
        shutil.rmtree(dest)
    for f in FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkout / f, dest / f)
    for file, old, new in PATCH:
        lines = (dest / file).read_text().splitlines()
        if old not in lines:
            raise PeerError(f"patching {file}: line {old!r} not found")
        lines[lines.index(old)] = new
        (dest / file).write_text("\n".join(lines) + "\n")
    return dest


def lay_out_small_split(root: Path, dest: Path) -> dict[str, int]:
    """Write the small split's characters as ``dest/{train,test}/<alphabet>/<character>/*.png`` (original PNGs).

    Train: every character of images_background_small1.zip; test: small2's characters whose alphabet small1
    lacks (``datasets.omniglot.small_split``). Returns the number of characters written per part.
    """
    from datasets import archive, omniglot

    zips = omniglot.ensure_zips(root, omniglot.SPLITS["small"], omniglot.CHECKSUMS, download=False)
    members = []
    for z in zips:
        with archive.open_zip(z) as zf:
            members.append({n: archive.read_member(zf, n) for n in zf.namelist() if n.endswith(".png")})
    chars = [{"/".join(n.split("/")[1:3]) for n in m} for m in members]
    seen = {c.split("/")[0] for c in chars[0]}
    parts = {"train": (members[0], chars[0]), "test": (members[1], {c for c in chars[1] if c.split("/")[0] not in seen})}
    counts = {}
    for part, (files, keep) in parts.items():
        for name, data in files.items():
            char = "/".join(name.split("/")[1:3])
            if char in keep:
                target = dest / part / char / name.split("/")[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        counts[part] = len(keep)
    return counts


def peer_python(env: Path, python: str | None) -> str:
    """The peer environment's interpreter (made with pip when absent); PeerError if TensorFlow will not import."""
    if python is None:
        py = env / "bin" / "python"
        if not py.is_file():
            print(f"making the TensorFlow environment {env} ({', '.join(PACKAGES)}; about 1.5 GB)...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
            p = subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], capture_output=True, text=True)
            if p.returncode != 0:
                raise PeerError(f"TensorFlow did not install into {env} (pip exit {p.returncode}):\n"
                                f"{p.stderr.strip()[-1500:]}\nremove {env} and retry, or pass --python")
        python = str(py)
    probe = subprocess.run([python, "-c", "import tensorflow.compat.v1 as tf, tf_keras; print(tf.__version__)"],
                           capture_output=True, text=True, env={**os.environ, **TF_ENV})
    if probe.returncode != 0:
        raise PeerError(f"TensorFlow does not import with {python}:\n{probe.stderr.strip()[-800:]}\n"
                        f"install {' '.join(PACKAGES)} there, or remove {env} to have it made again")
    return python


def run_one(who: str, threads: int, args, python: str, code: Path, data: Path, evaluation: bool = False) -> dict:
    """One timing process: the authors' code (``DRIVER``, in the peer env) or ours (``official_reptile_ours``)."""
    ours = [sys.executable, "-m", "benchmarks.peers.official_reptile_ours"]
    if who == "official" and evaluation:
        cmd = [python, str(DRIVER), "--checkout", str(code), "--data", str(data / "test"), "--threads", str(threads),
               "--tasks", str(args.eval_tasks), "--repeats", str(args.eval_repeats)]
    elif who == "official":
        cmd = [python, str(DRIVER), "--checkout", str(code), "--data", str(data / "train"), "--threads", str(threads),
               "--iters", str(args.iters), "--warmup", str(args.warmup)]
    elif evaluation:
        cmd = ours + ["eval", "--evaluator", who, "--threads", str(threads), "--tasks", str(args.eval_tasks),
                      "--repeats", str(args.eval_repeats)]
    else:
        cmd = ours + ["train", "--backend", who, "--threads", str(threads), "--iters", str(args.iters),
                      "--warmup", str(args.warmup)]
    env = {**os.environ, "PYTHONPATH": str(REPO), **TF_ENV}
    if who != "official":  # this project's processes run as its cell processes do; the authors' code as released
        from benchmarks.running.allocator import malloc_env

        env = malloc_env(env)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise PeerError(f"the {who} {'evaluation' if evaluation else 'training'} run ({threads or 'default'} threads) "
                        f"failed (exit {p.returncode}):\n"
                        f"{p.stderr.strip()[-1500:]}")
    return parse(p.stdout)


def parse_last_json(stdout: str) -> dict:
    """The JSON object a run printed last (TensorFlow may print other lines before it)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PeerError(f"a peer run printed no result; its output ended with: {stdout.strip()[-500:]!r}")


def parse(stdout: str) -> dict:
    """The timing a run printed last; PeerError without per-iteration times."""
    data = parse_last_json(stdout)
    if not data.get("wall_s") or len(data["wall_s"]) != len(data.get("cpu_s", [])):
        raise PeerError(f"a timing run printed no per-iteration times: {json.dumps(data)[:200]}")
    return data


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


def mallocs() -> dict[str, str]:
    """The malloc each side's processes run with: the authors' code with this environment's (glibc's unless
    ``LD_PRELOAD`` says otherwise: with tcmalloc it was not faster here), this project's with ``malloc_env``'s."""
    from benchmarks.running.allocator import inherited_malloc, planned_malloc

    return {"official": inherited_malloc(), "this project": planned_malloc()}


def rows_for(report: dict, git: dict, command: str) -> list[dict]:
    """One cost row (no evaluation) per implementation and thread setting, in this project's schema."""
    import hashlib

    from benchmarks.records import provenance
    from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION

    out = []
    for key in sorted(report["median_s"]):
        who, threads = key.split("/")
        steps = [r["median_s"][key] for r in report["rounds"]]
        settings = {"implementation": who, "threads": threads, "dataset": "omniglot", "split": "small", "ways": 5,
                    "train_shots": 10, "inner_steps": 5, "inner_batch": 10, "inner_lr": 0.001, "adam_beta1": 0.0,
                    "meta_batch": 5, "iterations_timed": report["iters"], "sampling_included": True}
        config_json = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(config_json.encode()).hexdigest()[:12]
        label = "1 thread" if threads == "1" else "default threads"
        malloc = report.get("malloc", {}).get("official" if who == "official" else "this project", "glibc")
        base = provenance.provenance("cpu", command, git)
        row = {
            "schema_version": SCHEMA_VERSION, "suite": "peer-official-reptile", "cell": f"{who}-{threads}t",
            "algorithm": "reptile", "backend": "official-tf" if who == "official" else who, "dataset": "omniglot",
            "split": "small", "ways": 5, "shots": 10, "transductive": False, "first_order": True, "inner_steps": 5,
            "eval_inner_steps": 0, "seed": 0, "meta_iterations": report["iters"], "iterations_run": report["iters"],
            "complete": True, "meta_batch": 5, "final_train_loss": None, "training_key": digest, "training_cells": 1,
            "metric": "", "metric_mean": None, "metric_ci95": None, "eval_tasks": 0, "eval_mode": "",
            "peak_memory_bytes": report["peak_rss_bytes"][key], "memory_kind": "cpu_rss", "autograd_saved_bytes": None,
            "step_time_median_s": statistics.median(steps), "step_time_total_s": sum(steps), "eval_time_s": 0.0,
            "total_time_s": sum(steps), "parallel_jobs": 1, "world_size": 1,
            **base, "device": provenance.cpu_device(label, malloc),
            "backend_info": report["versions"][who], "config_json": config_json, "config_hash": digest,
        }
        out.append({c: row[c] for c in COLUMNS})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.official_reptile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="a clone of https://github.com/openai/supervised-reptile")
    ap.add_argument("--env", default=str(REPO / ".venv-official-reptile"), help="the TensorFlow environment to use or make")
    ap.add_argument("--python", default=None, help="an interpreter that already has TensorFlow 2 and tf-keras")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=60, help="timed meta-iterations per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--eval-tasks", type=int, default=20, help="evaluation tasks per timed repeat (0: no evaluation timing)")
    ap.add_argument("--eval-repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "results"), help="results folder (rows and the JSON report)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.iters < 3 or args.eval_tasks == 1 or args.eval_tasks < 0 or args.eval_repeats < 1:
        print("error: --rounds must be >= 1, --iters >= 3, --eval-tasks 0 or >= 2 and --eval-repeats >= 1", file=sys.stderr)
        return 2
    from benchmarks.records import provenance
    from benchmarks.records.rows import write_row
    from datasets.archive import atomic_write

    try:
        try:
            malloc = mallocs()
        except ValueError as e:  # a REPTILE_BENCH_MALLOC that names no malloc
            raise PeerError(str(e)) from None
        checkout = Path(args.checkout).expanduser().resolve()
        check_checkout(checkout)
        python = peer_python(Path(args.env), args.python)
        with tempfile.TemporaryDirectory(prefix="official-reptile-") as tmp:
            code = patch_copy(checkout, Path(tmp) / "supervised-reptile")
            counts = lay_out_small_split(Path(os.environ.get("OMNIGLOT_ROOT") or REPO / "data" / "omniglot"),
                                         Path(tmp) / "omniglot")
            print(f"official code patched into {code}; small split laid out ({counts['train']} training characters)")
            rounds, eval_rounds = [], []
            for r in range(args.rounds):
                for evaluation, contenders, kept in ((False, CONTENDERS, rounds), (True, EVAL_CONTENDERS, eval_rounds)):
                    if evaluation and not args.eval_tasks:
                        continue
                    results = {f"{who}/{threads}": run_one(who, threads, args, python, code, Path(tmp) / "omniglot",
                                                           evaluation) for who, threads in contenders}
                    kept.append(results)
                    report = rounds_report([results])[0]
                    print(f"round {r + 1}, {'per evaluation task' if evaluation else 'per meta-iteration'}: "
                          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in report["median_s"].items()))
                    print("  same-round ratio to the official code: "
                          + ", ".join(f"{k} x{v:.2f}" for k, v in report["ratio_to_official"].items()))
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - data problems and the like: one line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    per_round = rounds_report(rounds)
    keys = list(per_round[0]["median_s"])
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = {
        "command": provenance.command_line(), **provenance.git_state(exclude=Path(args.out)),
        "cpu": provenance.cpu_model(), "iters": args.iters, "warmup": args.warmup,
        "clock": {"1": "process CPU time", "0": "wall time"},
        "official_commit": commit.stdout.strip() or "unknown", "malloc": malloc,
        "versions": {"official": f"tensorflow {rounds[0]['official/1'].get('tensorflow')} (compat.v1 graph), "
                                 f"openai/supervised-reptile {commit.stdout.strip() or '?'}",
                     "reference": f"torch {rounds[0]['reference/1'].get('torch')}, this project (reference)",
                     "batched": f"torch {rounds[0]['batched/1'].get('torch')}, this project (batched)"},
        "rounds": per_round,
        "median_s": {k: statistics.median(r["median_s"][k] for r in per_round) for k in keys},
        "peak_rss_bytes": {k: max(r[k]["peak_rss_bytes"] for r in rounds) for k in keys},
    }
    if eval_rounds:
        per_eval = rounds_report(eval_rounds)
        report["eval"] = {"tasks": args.eval_tasks, "repeats": args.eval_repeats,
                          "setting": "5-way 1-shot, 50 Adam steps (lr 0.001, beta1 0) on minibatches of 5, "
                                     "non-transductive, task sampling included",
                          "rounds": per_eval,
                          "median_s": {k: statistics.median(r["median_s"][k] for r in per_eval) for k in per_eval[0]["median_s"]}}
    out = Path(args.out)
    with atomic_write(out / "peers" / "official_reptile.json", "w") as f:
        json.dump(report, f, indent=1)
    for row in rows_for(report, provenance.git_state(exclude=out), report["command"]):
        write_row(out / "peer-official-reptile" / "rows.csv", row)
    print(f"wrote {out / 'peers' / 'official_reptile.json'} and {out / 'peer-official-reptile' / 'rows.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
