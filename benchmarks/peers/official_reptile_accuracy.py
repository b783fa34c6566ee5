"""The authors' Reptile trained and scored at this project's budget, on this project's evaluation tasks.

    make peer-official-reptile-accuracy REPTILE_CHECKOUT=/path/to/supervised-reptile
    python -m benchmarks.peers.official_reptile_accuracy --checkout PATH [--suite default] [--threads 1]

For every training of the suite's Reptile cells on Omniglot (in the default suite: one training, scored 5-way
1- and 5-shot, transductive and not), the official code (checked, patched and given the small split as
``official_reptile`` does) trains with the same settings for the same number of meta-iterations, as its
``supervised_reptile.train`` does, then scores each cell's own evaluation tasks (the classes, support and query
images this project's evaluator draws from the test part) with its ``Reptile.evaluate``, with the cell's
fine-tuning steps and minibatch size (``official_reptile_driver.py --accuracy``). What stays the official
code's own: its weight initialisation and training-task draws, each task's label order and fine-tuning
minibatches, and its fine-tuning starting from the training Adam's moments (docs/protocol.md).

One row per cell and seed goes to ``results/peer-official-reptile/rows.csv`` (cell ``official-<cell>``, suite
``peer-official-reptile``, or ``peer-official-reptile-<suite>`` for a suite other than the default, backend
``official-tf``; its config is the cell's, with the official commit), with the per-task scores beside it, so the
docs/peers.md pairs it with this project's row task by task (``benchmarks.reporting.official_accuracy``). ``--suite
reptile-seeds`` runs the default suite's four Reptile cells with three training seeds (ours first:
``python -m benchmarks.cli run --suite reptile-seeds``).

A cell the official code cannot run as configured is refused by name before anything runs: it fine-tunes with
its training optimiser (Adam, the training's learning rate and beta1, beta1 = 0 in the official model), keeps
Adam's state across tasks, predicts one query image per class and reads Omniglot's small split here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.peers.accuracy_rows import accuracy_rows
from benchmarks.peers.official_reptile import DRIVER, check_checkout, lay_out_small_split, patch_copy
from benchmarks.peers.tf_env import REPO, TF_ENV, PeerError, add_env_arguments, checkout_commit, parse_last_json, \
    peer_python

SUITE = "peer-official-reptile"


def row_suite(suite: str) -> str:
    """The ``suite`` column of the authors' rows for a suite's cells: one name per suite, so that the rows of
    two suites' cells of the same name stay apart (``peer-official-reptile`` for the default suite's)."""
    return SUITE if suite == "default" else f"{SUITE}-{suite}"


def official_settings(training) -> dict:
    """The driver's settings for one training (``benchmarks.running.trainings.Training``); PeerError if unfit."""
    first = training.first
    problems = []
    for c in training.cells:
        lr, ev = c.learner, c.eval
        checks = [
            (c.dataset == "omniglot" and c.split == "small", f"dataset {c.dataset}/{c.split} (only omniglot/small "
                                                             "is laid out for the official reader)"),
            (c.learner.algorithm == "reptile", f"algorithm {lr.algorithm}"),
            ((c.train_part, c.eval_part) == ("train", "test"), f"parts {c.train_part}/{c.eval_part}"),
            (lr.inner_optimizer == "adam" and lr.adam_beta1 == 0.0, "an inner optimiser other than Adam with beta1 0 "
                                                                    "(the official model's)"),
            (lr.persist_inner_state, "persist_inner_state = false (the official code keeps Adam's state)"),
            (c.train_query == 0, f"train_query = {c.train_query} (Reptile's training tasks have no query set)"),
            (ev.inner_optimizer == lr.inner_optimizer and ev.inner_lr == lr.inner_lr
             and ev.adam_beta1 == lr.adam_beta1, "fine-tuning with another optimiser or learning rate than training "
                                                 "(the official code fine-tunes with its training optimiser)"),
            (ev.query == 1, f"eval.query = {ev.query} (the official code predicts one query image per class)"),
            (ev.adapt_head_modules == 0 and ev.inner_steps >= 1, "fine-tuning only the head, or not at all"),
        ]
        problems += [f"{c.cell}: {why}" for ok, why in checks if not ok]
    if problems:
        raise PeerError("the official code cannot run these cells as configured:\n  " + "\n  ".join(problems))
    lr = first.learner
    return {"seed": first.seed, "ways": first.ways, "train_shots": first.train_shots or first.shots,
            "meta_iterations": first.meta_iterations, "meta_batch": first.meta_batch, "inner_steps": lr.inner_steps,
            "inner_batch": lr.inner_batch or first.ways * (first.train_shots or first.shots),
            "inner_lr": lr.inner_lr, "meta_lr": lr.meta_lr, "meta_lr_final": lr.meta_lr_final}


def export_tasks(cell, path: Path) -> Path:
    """The cell's evaluation tasks as float32 [tasks, ways, 1 + shots, 28, 28], each class's query image first."""
    import numpy as np
    import torch

    from datasets import load_pool

    pool = load_pool(cell.dataset, cell.split, cell.eval_part)
    ev, k = cell.eval, cell.shots
    out = np.empty((ev.num_tasks, cell.ways, 1 + k, 28, 28), dtype=np.float32)
    for i in range(ev.num_tasks):
        sx, sy, qx, qy = (t[0] for t in pool.sample_task(cell.ways, k, 1, ev.seed, i).tensors())
        for c in range(cell.ways):  # labels are class positions; support and query are class-major
            out[i, c, 0] = qx[qy == c][0, 0].numpy()
            out[i, c, 1:] = sx[sy == c][:, 0].numpy()
        assert torch.equal(sy, torch.arange(cell.ways).repeat_interleave(k))
    np.save(path, out)
    return path


def rows_for(training, result: dict, versions: str, official_commit: str, threads: int, command: str,
             git: dict, eval_optimizer: str = "trained") -> list[tuple[dict, list[float]]]:
    """One (row, per-task scores in %) per cell of ``training``, in this project's schema."""
    suffix = "" if eval_optimizer == "trained" else "-fresh-adam"
    return accuracy_rows(training, result, "openai/supervised-reptile", official_commit, versions, threads, command,
                         git, row_suite(training.first.suite), suffix, {"eval_optimizer": eval_optimizer})


def run_training(training, python: str, code: Path, data: Path, tmp: Path, threads: int,
                 eval_optimizer: str = "trained") -> dict:
    """Export the cells' tasks, run the driver once, and return its parsed output."""
    settings = {**official_settings(training), "eval_optimizer": eval_optimizer}
    settings["evaluations"] = [
        {"name": c.cell, "transductive": c.eval.transductive, "inner_steps": c.eval.inner_steps,
         "inner_batch": c.eval.inner_batch or c.ways * c.shots,
         "tasks": str(export_tasks(c, tmp / f"{c.cell}.npy"))} for c in training.cells]
    path = tmp / f"{training.key}.json"
    path.write_text(json.dumps(settings))
    cmd = [python, str(DRIVER), "--checkout", str(code), "--data", str(data / "train"), "--threads", str(threads),
           "--accuracy", str(path)]
    print(f"training {training.name} with the official code ({settings['meta_iterations']} meta-iterations), then "
          f"{len(training.cells)} evaluations...", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **TF_ENV}, cwd=REPO)
    if p.returncode != 0:
        raise PeerError(f"the official accuracy run failed (exit {p.returncode}):\n{p.stderr.strip()[-1500:]}")
    result = parse_last_json(p.stdout)
    missing = [c.cell for c in training.cells if c.cell not in result.get("evaluations", {})]
    if len(result.get("step_wall_s", [])) != settings["meta_iterations"] or missing:
        raise PeerError(f"the official accuracy run printed {len(result.get('step_wall_s', []))} of "
                        f"{settings['meta_iterations']} meta-iterations" + (f"; no scores for {missing}" if missing else ""))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.official_reptile_accuracy",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="a clone of https://github.com/openai/supervised-reptile")
    add_env_arguments(ap)
    ap.add_argument("--suite", default="default", help="the suite whose Reptile cells are run (default: default)")
    ap.add_argument("--cells", default="*reptile*", help="which of its cells (glob; default: *reptile*)")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow threads (0: its default; default 1)")
    ap.add_argument("--eval-optimizer", choices=["trained", "fresh"], default="trained",
                    help="trained: the official code as it is (each evaluation task fine-tunes from the training "
                         "Adam's moments); fresh: Adam reset before every task, as this project's evaluator does "
                         "(rows named official-<cell>-fresh-adam)")
    ap.add_argument("--out", default=str(REPO / "results"), help="results folder")
    args = ap.parse_args(argv)
    from benchmarks.records import provenance
    from benchmarks.records.rows import write_result
    from benchmarks.running.suites import load_suite, select
    from benchmarks.running.trainings import group

    try:
        cells = [c for c in select(load_suite(args.suite), args.cells) if c.learner.algorithm == "reptile"
                 and c.dataset == "omniglot" and c.learner.backend == "reference" and c.eval.num_tasks > 0]
        if not cells:
            raise PeerError(f"suite {args.suite!r} has no evaluated Reptile cells on Omniglot (reference backend) "
                            f"matching {args.cells!r}")
        trainings = group(cells)
        for t in trainings:
            official_settings(t)  # refuse before anything slow runs
        checkout = Path(args.checkout).expanduser().resolve()
        check_checkout(checkout)
        commit = checkout_commit(checkout)
        command, git = provenance.command_line(), provenance.git_state(exclude=Path(args.out))
        written = []
        with tempfile.TemporaryDirectory(prefix="official-reptile-accuracy-") as tmp:
            tmp = Path(tmp)
            code = patch_copy(checkout, tmp / "supervised-reptile")
            # The data first: a missing zip is said before a TensorFlow environment is made.
            lay_out_small_split(Path(os.environ.get("OMNIGLOT_ROOT") or REPO / "data" / "omniglot"), tmp / "omniglot")
            python = peer_python(Path(args.env), args.python)
            for t in trainings:
                result = run_training(t, python, code, tmp / "omniglot", tmp, args.threads, args.eval_optimizer)
                versions = f"tensorflow {result.get('tensorflow')} (compat.v1 graph), openai/supervised-reptile {commit}"
                for row, scores in rows_for(t, result, versions, commit, args.threads, command, git,
                                            args.eval_optimizer):
                    write_result(Path(args.out) / SUITE, row, [], scores)  # each training's rows as it ends
                    written.append(row)
                    print(f"  {row['cell']}: {row['metric_mean']:.2f} ± {row['metric_ci95']:.2f} % "
                          f"({row['eval_tasks']} tasks)", flush=True)
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:  # a suite or data problem: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} rows to {Path(args.out) / SUITE / 'rows.csv'}; regenerate the README and docs with "
          "`python -m benchmarks.reporting.readme`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
