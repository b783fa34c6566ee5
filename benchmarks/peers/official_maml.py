"""The authors' MAML (cbfinn/maml, TensorFlow) trained and scored on this project's tasks, and timed beside ours.

    make peer-official-maml MAML_CHECKOUT=/path/to/maml          # a clone of https://github.com/cbfinn/maml
    python -m benchmarks.peers.official_maml --checkout PATH [--suite maml-official] [--rounds 3]
                                             [--no-accuracy] [--no-timing]

What it does, without touching the checkout or this project's environment:
1. checks that PATH is a checkout of cbfinn/maml that ``official_maml.patch`` applies to, and copies its code with
   the patch applied (``git apply``; the patch says hunk by hunk what it changes: ``tensorflow.compat.v1``, and
   the three ``tf.contrib`` calls rewritten with the same semantics);
2. uses the TensorFlow environment of the authors' codes (``benchmarks.peers.tf_env``), made on first use;
3. accuracy (unless ``--no-accuracy``): for every MAML or first-order MAML cell of the suite, hands the official
   code (``official_maml_driver.py``) the cell's own training tasks (the pool indices this project's sampler
   draws for every meta-iteration, so both codes train on the very same tasks) and its 600 evaluation tasks;
   the official code trains for the cell's meta-iterations with the cell's settings and scores each task after
   the cell's number of test-time updates. One row per cell (``official-<cell>``, backend ``official-tf``) and
   its per-task scores go to ``results/peer-official-maml/``, paired task by task with this project's row of
   the cell in docs/peers.md and ``results/tables/paired.md``. Any Omniglot split works: ``maml-official`` is the
   small one (the zips the tests read); a suite of the paper split's cells (the full background and evaluation zips)
   hands the official code that split's tasks the same way;
4. timing (unless ``--no-timing``): ``--rounds`` rounds, each running the official training step and this
   project's (reference and batched backends) at the setting the "MAML implementations compared" table uses
   (``ours.PRESETS["maml-5"]``: 5-way 5-shot, 15 query images per class, 5 inner SGD steps of 0.1, meta-batch 5;
   the official graph unrolled for those 5 steps), at 1 thread and at each library's default threads, once with
   glibc's malloc on both sides and once with tcmalloc on both (``benchmarks.peers.timing``); writes
   ``results/peers/official_maml.json``.
Bad input (no checkout, another code, a cell the official code cannot run as configured, TensorFlow that does not
install) stops with a message before anything slow runs; the project's own results are untouched until then.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.peers import timing
from benchmarks.peers.accuracy_rows import accuracy_rows
from benchmarks.peers.tf_env import REPO, TF_ENV, PeerError, add_env_arguments, checkout_commit, parse_last_json, \
    peer_python

DRIVER = Path(__file__).resolve().parent / "official_maml_driver.py"
PATCH = Path(__file__).resolve().parent / "official_maml.patch"
FILES = ["main.py", "maml.py", "utils.py", "data_generator.py", "special_grads.py"]
SUITE = "peer-official-maml"
NAME = "cbfinn/maml"
TIMED_PRESET = "maml-5"
"""The setting the timing rounds run: ``ours.PRESETS[TIMED_PRESET]``, the "MAML implementations compared" table's."""


def git_apply(folder: Path, check: bool = False) -> subprocess.CompletedProcess:
    """``git apply`` of ``PATCH`` inside ``folder`` (never a repository around it: git stops looking at its parent)."""
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(folder.resolve().parent)}
    return subprocess.run(["git", "apply", "--unidiff-zero", *(["--check"] if check else []), str(PATCH)], cwd=folder,
                          env=env, capture_output=True, text=True)


def check_checkout(path: Path) -> None:
    if not path.is_dir():
        raise PeerError(f"no checkout at {path}: clone it with `git clone https://github.com/cbfinn/maml {path}` (or "
                        "pass MAML_CHECKOUT=<the folder of your clone>)")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PeerError(f"{path} is not a checkout of cbfinn/maml: {', '.join(missing)} missing")
    with tempfile.TemporaryDirectory(prefix="official-maml-check-") as tmp:
        p = git_apply(copy_code(path, Path(tmp) / "maml"), check=True)
    if p.returncode != 0:
        raise PeerError(f"{PATCH.name} does not apply to {path} (another version of the official code? it was made "
                        f"for its last commit, a7f45f1):\n{p.stderr.strip()[-800:]}")


def copy_code(checkout: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(checkout / f, dest / f)
    return dest


def patch_copy(checkout: Path, dest: Path) -> Path:
    """A patched copy of the checkout's code in ``dest`` (the checkout itself is never modified)."""
    p = git_apply(copy_code(checkout, dest))
    if p.returncode != 0:
        raise PeerError(f"applying {PATCH.name} failed:\n{p.stderr.strip()[-800:]}")
    return dest


def official_settings(cell) -> dict:
    """The driver's settings for one cell; PeerError naming what the official code cannot run as configured."""
    lr, ev = cell.learner, cell.eval
    checks = [
        (cell.dataset == "omniglot", f"dataset {cell.dataset} (the official code's network and pipeline are "
                                     "Omniglot's: 28x28 grey images)"),
        (lr.algorithm in ("maml", "fomaml"), f"algorithm {lr.algorithm}"),
        ((cell.train_part, cell.eval_part) == ("train", "test"), f"parts {cell.train_part}/{cell.eval_part}"),
        (lr.inner_optimizer == "sgd", f"inner optimiser {lr.inner_optimizer} (MAML's inner steps are SGD on the "
                                      "whole support set)"),
        (cell.train_query == cell.shots, f"train_query = {cell.train_query} (the official code draws K = shots query "
                                         "images per class)"),
        (ev.inner_optimizer == "sgd" and ev.inner_lr == lr.inner_lr and ev.inner_batch in (0, cell.ways * cell.shots),
         "fine-tuning other than SGD of the training's step size on the whole support set"),
        (ev.transductive, "non-transductive evaluation (the official code predicts the query set in one batch)"),
        (1 <= ev.inner_steps <= 10, f"eval.inner_steps = {ev.inner_steps} (the official graph unrolls 1 to 10)"),
        (ev.adapt_head_modules == 0, "fine-tuning only the head"),
    ]
    problems = [why for ok, why in checks if not ok]
    if problems:
        raise PeerError(f"the official code cannot run cell {cell.cell} as configured: " + "; ".join(problems))
    return {"mode": "accuracy", "seed": cell.seed, "ways": cell.ways, "shots": cell.shots, "inner_lr": lr.inner_lr,
            "inner_steps": lr.inner_steps, "meta_batch": cell.meta_batch, "meta_lr": lr.meta_lr,
            "meta_iterations": cell.meta_iterations, "first_order": cell.first_order, "test_num_updates": 10}


def export_pool(pool, path: Path) -> Path:
    """A pool's images as every task shows them, float32 [classes, examples, 28, 28]."""
    import numpy as np

    np.save(path, pool.rotated_images()[:, :, 0].numpy().astype(np.float32))
    return path


def export_draws(pool, ways: int, per: int, seed: int, indices, path: Path, shape: tuple) -> Path:
    """The flat pool indices (class * examples + example) of tasks ``indices`` of ``seed``, reshaped to ``shape``."""
    import numpy as np

    flat = []
    for i in indices:
        classes, picks = pool.draw(ways, per, seed, i)
        flat.append((classes[:, None] * pool.examples_per_class + picks).numpy())
    np.save(path, np.asarray(flat, dtype=np.int32).reshape(*shape, ways, per))
    return path


def run_cell(cell, python: str, code: Path, tmp: Path, threads: int) -> dict:
    """Export the cell's training and evaluation tasks, run the driver once, return its parsed output."""
    from datasets import load_pool

    settings = official_settings(cell)
    train, test = load_pool(cell.dataset, cell.split, cell.train_part), load_pool(cell.dataset, cell.split, cell.eval_part)
    mb, its = cell.meta_batch, cell.meta_iterations
    settings["train_pool"] = str(export_pool(train, tmp / "train_pool.npy"))
    settings["train_draws"] = str(export_draws(train, cell.ways, cell.shots + cell.train_query, cell.seed,
                                               range(its * mb), tmp / f"{cell.cell}-train.npy", (its, mb)))
    ev = cell.eval
    settings["evaluations"] = [{"cell": cell.cell, "pool": str(export_pool(test, tmp / "test_pool.npy")),
                                "shots": cell.shots, "inner_steps": ev.inner_steps,
                                "draws": str(export_draws(test, cell.ways, cell.shots + ev.query, ev.seed,
                                                          range(ev.num_tasks), tmp / f"{cell.cell}-eval.npy",
                                                          (ev.num_tasks,)))}]
    path = tmp / f"{cell.cell}.json"
    path.write_text(json.dumps(settings))
    print(f"{cell.cell}: the official code trains {its} meta-iterations on the cell's tasks, then scores its "
          f"{ev.num_tasks} evaluation tasks...", flush=True)
    p = subprocess.run([python, str(DRIVER), "--checkout", str(code), "--settings", str(path), "--threads",
                        str(threads)], capture_output=True, text=True, env={**os.environ, **TF_ENV}, cwd=REPO)
    if p.returncode != 0:
        raise PeerError(f"the official run of {cell.cell} failed (exit {p.returncode}):\n{p.stderr.strip()[-1500:]}")
    result = parse_last_json(p.stdout)
    if len(result.get("wall_s", [])) != its or cell.cell not in result.get("evaluations", {}):
        raise PeerError(f"the official run of {cell.cell} printed {len(result.get('wall_s', []))} of {its} "
                        "meta-iterations, or no scores")
    return {**result, "step_wall_s": result["wall_s"]}


def timed_setting() -> dict:
    """``ours.PRESETS[TIMED_PRESET]`` (what this project's side of a round runs) in the official code's terms."""
    from benchmarks.peers.ours import PRESETS

    meta_batch, shots, query, fields = PRESETS[TIMED_PRESET]
    return {"ways": 5, "shots": shots, "query": query, "inner_lr": fields["inner_lr"],
            "inner_steps": fields["inner_steps"], "meta_batch": meta_batch, "meta_lr": fields["meta_lr"],
            "first_order": fields["algorithm"] == "fomaml"}


def timing_command(args, python: str, code: Path, tmp: Path, timed: dict):
    """``(who, threads) -> command`` of one timing run at ``timed`` (``timed_setting()``)."""
    from datasets import load_pool

    pool = load_pool("omniglot", "small", "train")
    n = args.warmup + args.iters
    settings = {**timed, "mode": "time", "seed": 0, "iters": args.iters, "warmup": args.warmup, "meta_iterations": n,
                "test_num_updates": timed["inner_steps"], "train_pool": str(export_pool(pool, tmp / "train_pool.npy")),
                "train_draws": str(export_draws(pool, timed["ways"], timed["shots"] + timed["query"], 0,
                                                range(n * timed["meta_batch"]), tmp / "timed.npy",
                                                (n, timed["meta_batch"])))}
    path = tmp / "timed.json"
    path.write_text(json.dumps(settings))
    ours = [sys.executable, "-m", "benchmarks.peers.ours", "train", "--preset", TIMED_PRESET]

    def cmd(who: str, threads: int) -> list[str]:
        if who == "official":
            return [python, str(DRIVER), "--checkout", str(code), "--settings", str(path), "--threads", str(threads)]
        return ours + ["--backend", who, "--threads", str(threads), "--iters", str(args.iters), "--warmup",
                       str(args.warmup)]

    return cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.official_maml", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="a clone of https://github.com/cbfinn/maml")
    add_env_arguments(ap)
    ap.add_argument("--suite", default="maml-official", help="the suite whose MAML cells are run (run it first: ours)")
    ap.add_argument("--cells", default="*", help="which of its cells (glob; default: all)")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow threads of the accuracy runs (0: its default)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds")
    ap.add_argument("--iters", type=int, default=15, help="timed meta-iterations per timing run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-accuracy", action="store_true", help="timing only")
    ap.add_argument("--no-timing", action="store_true", help="accuracy only")
    ap.add_argument("--out", default=str(REPO / "results"), help="results folder")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.iters < 3 or args.warmup < 0 or (args.no_accuracy and args.no_timing):
        ap.error("--rounds must be >= 1, --iters >= 3, --warmup >= 0, and not both --no-accuracy and --no-timing")
    from benchmarks.records import provenance
    from benchmarks.records.rows import write_result
    from benchmarks.running.suites import load_suite, select
    from benchmarks.running.trainings import group
    from datasets.archive import atomic_write

    out = Path(args.out)
    try:
        cells = [] if args.no_accuracy else [
            c for c in select(load_suite(args.suite), args.cells) if c.learner.algorithm in ("maml", "fomaml")
            and c.learner.backend == "reference" and c.eval.num_tasks > 0]
        if not args.no_accuracy and not cells:
            raise PeerError(f"suite {args.suite!r} has no evaluated MAML or first-order MAML cells (reference backend) "
                            f"matching {args.cells!r}")
        for c in cells:
            official_settings(c)  # refuse before anything slow runs
        settings = [] if args.no_timing else timing.malloc_settings()
        checkout = Path(args.checkout).expanduser().resolve()
        check_checkout(checkout)
        commit = checkout_commit(checkout)
        command, git = provenance.command_line(), provenance.git_state(exclude=out)
        with tempfile.TemporaryDirectory(prefix="official-maml-") as tmp:
            tmp = Path(tmp)
            code = patch_copy(checkout, tmp / "maml")
            python = peer_python(Path(args.env), args.python)
            for c in cells:
                result = run_cell(c, python, code, tmp, args.threads)
                versions = f"tensorflow {result.get('tensorflow')} (compat.v1 graph), {NAME} {commit} + {PATCH.name}"
                (training,) = group([c])
                for row, scores in accuracy_rows(training, result, NAME, commit, versions, args.threads, command, git,
                                                 SUITE):
                    write_result(out / SUITE, row, [], scores)  # each cell's row as it ends
                    print(f"  {row['cell']}: {row['metric_mean']:.2f} ± {row['metric_ci95']:.2f} % "
                          f"({row['eval_tasks']} tasks)", flush=True)
            if settings:
                timed = timed_setting()
                print(f"timing at {timed} ({args.rounds} rounds; mallocs, each on both sides: {', '.join(settings)})")
                rounds = timing.measure(args.rounds, settings, timing_command(args, python, code, tmp, timed),
                                        "training")
    except (PeerError, ValueError, FileNotFoundError) as e:  # and a suite or data problem: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings:
        first = rounds[settings[0]][0]
        report = {"command": command, **provenance.git_state(exclude=out), "cpu": provenance.cpu_model(),
                  "iters": args.iters, "warmup": args.warmup, "clock": timing.CLOCKS, "timed": timed,
                  "setting": "second-order MAML, Omniglot-small 5-way 5-shot, 15 query images per class, 5 inner SGD "
                             "steps of 0.1, meta-batch 5, task sampling included (this project's) or feeding "
                             "included (the authors'); the official graph unrolled for those 5 steps",
                  "official_commit": commit,
                  "versions": {"official": f"tensorflow {first['official/1'].get('tensorflow')} (compat.v1 graph), "
                                           f"{NAME} {commit} + {PATCH.name}",
                               "reference": f"torch {first['reference/1'].get('torch')}, this project (reference, higher)",
                               "batched": f"torch {first['batched/1'].get('torch')}, this project (batched)"},
                  "mallocs": timing.summary(rounds)}
        with atomic_write(out / "peers" / "official_maml.json", "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {out / 'peers' / 'official_maml.json'}")
    print("regenerate the README and docs with `python -m benchmarks.reporting.readme`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
