"""The authors' Reptile (openai/supervised-reptile, TensorFlow) timed beside this project's, round by round.

    make peer-official-reptile REPTILE_CHECKOUT=/path/to/supervised-reptile      # a clone of the official repo
    python -m benchmarks.peers.official_reptile --checkout PATH [--rounds 3] [--iters 60]

What it does, without touching the checkout or this project's environment:
1. checks that PATH is a checkout of openai/supervised-reptile (its files and the lines it patches);
2. makes the TensorFlow environment of the authors' codes (``benchmarks.peers.tf_env``, default ``.venv-official``:
   tensorflow 2.21.0 + tf-keras, numpy, pillow; large, never the project's venv, never CI), or uses ``--python``;
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
   (``serial``) and batched (the default on CPU) (``ours.py`` is this project's side).
   Every round runs once with glibc's malloc on both sides and once with tcmalloc preloaded into both (where
   installed; ``benchmarks.peers.timing``), so each ratio compares code with code, never one malloc with another;
5. writes ``results/peers/official_reptile.json`` (every round, per malloc, training and evaluation) and one cost
   row per implementation, thread setting and malloc of the training timing to
   ``results/peer-official-reptile/rows.csv`` (backend ``official-tf`` for the authors').
Bad input (no checkout, a checkout of something else, TensorFlow that does not install or import, a
failing run) stops with a message; the project's own results are untouched until the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.peers import timing
from benchmarks.peers.tf_env import REPO, PeerError, add_env_arguments, checkout_commit, peer_python
from benchmarks.peers.timing import CONTENDERS

DRIVER = Path(__file__).resolve().parent / "official_reptile_driver.py"
FILES = ["run_omniglot.py", "supervised_reptile/__init__.py", "supervised_reptile/args.py",
         "supervised_reptile/models.py", "supervised_reptile/omniglot.py", "supervised_reptile/reptile.py",
         "supervised_reptile/train.py", "supervised_reptile/variables.py", "supervised_reptile/eval.py"]
PATCH = [  # (file, line as the official code has it, line as it runs on TensorFlow 2)
    (f, "import tensorflow as tf", "import tensorflow.compat.v1 as tf")
    for f in ("run_omniglot.py", "supervised_reptile/args.py", "supervised_reptile/models.py",
              "supervised_reptile/reptile.py", "supervised_reptile/train.py", "supervised_reptile/variables.py")
] + [("run_omniglot.py", "import tensorflow.compat.v1 as tf", "import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()")]
EVAL_CONTENDERS = CONTENDERS  # the evaluation timing: official, ours task by task ("reference"), ours batched
SETTING = ("Omniglot-small 5-way, 10 shots, 5 inner Adam steps on minibatches of 10, meta-batch 5, task sampling "
           "included")
EVAL_SETTING = ("5-way 1-shot, 50 Adam steps (lr 0.001, beta1 0) on minibatches of 5, non-transductive, task sampling "
                "included; the authors' `Reptile.evaluate` against this project's evaluator task by task and batched")


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


def command(args, python: str, code: Path, data: Path, evaluation: bool):
    """``(who, threads) -> the command of one timing run``: the authors' code (``DRIVER``, in the peer env) or ours
    (``ours``; "reference" stands for the task-by-task evaluator when timing evaluation)."""
    ours = [sys.executable, "-m", "benchmarks.peers.ours"]

    def cmd(who: str, threads: int) -> list[str]:
        if who == "official":
            part = ["--data", str(data / ("test" if evaluation else "train")), "--threads", str(threads)]
            work = (["--tasks", str(args.eval_tasks), "--repeats", str(args.eval_repeats)] if evaluation
                    else ["--iters", str(args.iters), "--warmup", str(args.warmup)])
            return [python, str(DRIVER), "--checkout", str(code), *part, *work]
        if evaluation:
            return ours + ["eval", "--evaluator", "serial" if who == "reference" else who, "--threads", str(threads),
                           "--tasks", str(args.eval_tasks), "--repeats", str(args.eval_repeats)]
        return ours + ["train", "--backend", who, "--threads", str(threads), "--iters", str(args.iters),
                       "--warmup", str(args.warmup)]

    return cmd


def rows_for(report: dict, git: dict, command: str) -> list[dict]:
    """One cost row (no evaluation) per implementation, thread setting and malloc, in this project's schema."""
    import hashlib

    from benchmarks.records import provenance
    from benchmarks.records.rows import COLUMNS, SCHEMA_VERSION

    out = []
    for malloc, part in report["mallocs"].items():
        for key in sorted(part["median_s"]):
            who, threads = key.split("/")
            steps = [r["median_s"][key] for r in part["rounds"]]
            settings = {"implementation": who, "threads": threads, "malloc": malloc, "dataset": "omniglot",
                        "split": "small", "ways": 5, "train_shots": 10, "inner_steps": 5, "inner_batch": 10,
                        "inner_lr": 0.001, "adam_beta1": 0.0, "meta_batch": 5, "iterations_timed": report["iters"],
                        "sampling_included": True}
            config_json = json.dumps(settings, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(config_json.encode()).hexdigest()[:12]
            label = "1 thread" if threads == "1" else "default threads"
            row = {
                "schema_version": SCHEMA_VERSION, "suite": "peer-official-reptile", "cell": f"{who}-{threads}t-{malloc}",
                "algorithm": "reptile", "backend": "official-tf" if who == "official" else who, "dataset": "omniglot",
                "split": "small", "ways": 5, "shots": 10, "transductive": False, "first_order": True, "inner_steps": 5,
                "eval_inner_steps": 0, "seed": 0, "meta_iterations": report["iters"], "iterations_run": report["iters"],
                "complete": True, "meta_batch": 5, "final_train_loss": None, "training_key": digest,
                "training_cells": 1, "metric": "", "metric_mean": None, "metric_ci95": None, "eval_tasks": 0,
                "eval_mode": "", "peak_memory_bytes": part["peak_rss_bytes"][key], "memory_kind": "cpu_rss",
                "autograd_saved_bytes": None, "step_time_median_s": statistics.median(steps),
                "step_time_total_s": sum(steps), "eval_time_s": 0.0, "total_time_s": sum(steps), "parallel_jobs": 1,
                "world_size": 1, **provenance.provenance("cpu", command, git),
                "device": provenance.cpu_device(label, malloc),
                "backend_info": report["versions"][who], "config_json": config_json, "config_hash": digest,
            }
            out.append({c: row[c] for c in COLUMNS})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.official_reptile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="a clone of https://github.com/openai/supervised-reptile")
    add_env_arguments(ap)
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
        settings = timing.malloc_settings()
        checkout = Path(args.checkout).expanduser().resolve()
        check_checkout(checkout)
        python = peer_python(Path(args.env), args.python)
        with tempfile.TemporaryDirectory(prefix="official-reptile-") as tmp:
            code = patch_copy(checkout, Path(tmp) / "supervised-reptile")
            data = Path(tmp) / "omniglot"
            counts = lay_out_small_split(Path(os.environ.get("OMNIGLOT_ROOT") or REPO / "data" / "omniglot"), data)
            print(f"official code patched into {code}; small split laid out ({counts['train']} training characters); "
                  f"mallocs, each on both sides: {', '.join(settings)}")
            train = timing.measure(args.rounds, settings, command(args, python, code, data, False), "training")
            evals = (timing.measure(args.rounds, settings, command(args, python, code, data, True), "evaluation")
                     if args.eval_tasks else None)
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - data problems and the like: one line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    first = train[settings[0]][0]
    commit = checkout_commit(checkout)
    report = {
        "command": provenance.command_line(), **provenance.git_state(exclude=Path(args.out)),
        "cpu": provenance.cpu_model(), "iters": args.iters, "warmup": args.warmup, "clock": timing.CLOCKS,
        "setting": SETTING, "official_commit": commit,
        "versions": {"official": f"tensorflow {first['official/1'].get('tensorflow')} (compat.v1 graph), "
                                 f"openai/supervised-reptile {commit}",
                     "reference": f"torch {first['reference/1'].get('torch')}, this project (reference)",
                     "batched": f"torch {first['batched/1'].get('torch')}, this project (batched)"},
        "mallocs": timing.summary(train),
    }
    if evals:
        report["eval"] = {"tasks": args.eval_tasks, "repeats": args.eval_repeats, "setting": EVAL_SETTING,
                          "mallocs": timing.summary(evals)}
    out = Path(args.out)
    with atomic_write(out / "peers" / "official_reptile.json", "w") as f:
        json.dump(report, f, indent=1)
    for row in rows_for(report, provenance.git_state(exclude=out), report["command"]):
        write_row(out / "peer-official-reptile" / "rows.csv", row)
    print(f"wrote {out / 'peers' / 'official_reptile.json'} and {out / 'peer-official-reptile' / 'rows.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
