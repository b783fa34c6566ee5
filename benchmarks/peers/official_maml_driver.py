"""Train, score and time the authors' MAML (cbfinn/maml, patched for TensorFlow 2); run INSIDE the peer TF env.

    <peer-venv>/bin/python official_maml_driver.py --checkout PATCHED --settings SETTINGS.json [--threads 1]

Standalone on purpose (the peer environment has TensorFlow and numpy, not torch or this project). It imports
the patched official modules, registers the official flags by importing its ``main`` (nothing runs: main.py
runs only as a script) and sets them as the README's Omniglot 5-way command does, with the settings the file
gives: ``--datasource=omniglot --num_classes=N --update_batch_size=K --update_lr=... --num_updates=...
--meta_batch_size=... --meta_lr=... [--stop_grad]``. It builds ``MAML(784, N, test_num_updates=10)`` as
main.py does for Omniglot (the timing builds it with the trained number of steps instead, so that its graph
unrolls no test-time steps beside the training's), its training graph (``construct_model(prefix='metatrain_')``) and, with
``meta_batch_size = 1`` as main.py sets it for testing, its evaluation graph (``prefix='metaval_'``), both on
the placeholders ``MAML`` makes when given no input tensors (the entry point its sinusoid path uses): the
official queue pipeline pre-draws 200,000 batches of file names before the first step, so the tasks come from
this project's sampler instead, the same tasks this project's learner trains and is scored on.

The settings file names ``.npy`` arrays the harness (``official_maml.py``) wrote: each pool's images
[classes, examples, 28, 28] (rotations already applied, pixels as this project reads them) and, per training
iteration or evaluation task, the pool indices of every class's images [.., ways, shots + query] (support
first). Images are fed as the official pipeline makes them: flattened, ``1 - pixel`` (strokes 1), labels
one-hot in class order.

- ``"mode": "accuracy"``: runs ``metatrain_op`` once per iteration (main.py's loop without its summaries), then
  scores every evaluation task with ``metaval_total_accuracies2[steps - 1]`` (the query accuracy after the
  cell's number of test-time updates, transductive: the query set is one batch) and prints each task's correct
  count.
- ``"mode": "time"``: ``warmup`` + ``iters`` training iterations, each timed (wall and process CPU).
Prints one JSON object last.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from benchmarks.records.mallocs import malloc_in_use  # noqa: E402  (standard library only: fine in the TF env)


def flags_argv(s: dict) -> list:
    """The official flags of these settings (main.py's Omniglot 5-way usage line, scaled by the settings)."""
    argv = ["official_maml_driver", "--datasource=omniglot", f"--num_classes={s['ways']}",
            f"--update_batch_size={s['shots']}", f"--update_lr={s['inner_lr']}", f"--num_updates={s['inner_steps']}",
            f"--meta_batch_size={s['meta_batch']}", f"--meta_lr={s['meta_lr']}",
            f"--metatrain_iterations={s['meta_iterations']}", "--norm=batch_norm", "--num_filters=64",
            "--max_pool=False", "--log=False", f"--stop_grad={bool(s['first_order'])}"]
    return argv


def batch(np, pool, draws, shots, ways):
    """Feeds of one meta-batch: draws [tasks, ways, shots + query] of pool indices -> inputa, labela, inputb, labelb."""
    flat = pool.reshape(-1, 28 * 28)
    images = 1.0 - flat[draws]  # [tasks, ways, per, 784]; the official pipeline's 1 - pixel / 255
    tasks = draws.shape[0]
    onehot = np.eye(ways, dtype=np.float32)
    support = images[:, :, :shots].reshape(tasks, -1, 28 * 28)
    query = images[:, :, shots:].reshape(tasks, -1, 28 * 28)
    per_q = draws.shape[2] - shots
    labela = np.broadcast_to(np.repeat(onehot, shots, axis=0), (tasks, ways * shots, ways))
    labelb = np.broadcast_to(np.repeat(onehot, per_q, axis=0), (tasks, ways * per_q, ways))
    return support, labela, query, labelb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", required=True, help="the patched copy of cbfinn/maml")
    ap.add_argument("--settings", required=True, help="the harness's settings JSON")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its default)")
    args = ap.parse_args()
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads)
    with open(args.settings) as f:
        s = json.load(f)
    sys.path.insert(0, args.checkout)
    import numpy as np
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    import main as official  # noqa: F401  (registers the official flags; main() runs only as a script)
    from maml import MAML

    FLAGS = tf.flags.FLAGS
    FLAGS(flags_argv(s))
    np.random.seed(s["seed"])
    tf.set_random_seed(s["seed"])
    ways, shots = s["ways"], s["shots"]
    test_num_updates = s.get("test_num_updates", 10)  # main.py's 10 for Omniglot; the timing, the trained steps
    model = MAML(28 * 28, ways, test_num_updates=test_num_updates)
    model.construct_model(input_tensors=None, prefix="metatrain_")
    train_ph = (model.inputa, model.labela, model.inputb, model.labelb)
    FLAGS.meta_batch_size = 1  # as main.py sets it before building the graph it tests with
    model.construct_model(input_tensors=None, prefix="metaval_")
    eval_ph = (model.inputa, model.labela, model.inputb, model.labelb)
    FLAGS.meta_batch_size = s["meta_batch"]
    config = tf.ConfigProto(intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    train_pool = np.load(s["train_pool"])
    draws = np.load(s["train_draws"], mmap_mode="r")
    loss_after = model.total_losses2[FLAGS.num_updates - 1]
    out = {"tensorflow": tf.__version__, "threads": args.threads, "wall_s": [], "cpu_s": [], "losses": []}
    timed = s.get("iters") if s["mode"] == "time" else None
    steps = (s.get("warmup", 0) + timed) if timed else s["meta_iterations"]
    with tf.Session(config=config) as sess:
        sess.run(tf.global_variables_initializer())
        for it in range(steps):
            w0, c0 = time.perf_counter(), time.process_time()
            feed = dict(zip(train_ph, batch(np, train_pool, np.asarray(draws[it % len(draws)]), shots, ways)))
            _, loss = sess.run([model.metatrain_op, loss_after], feed)
            out["losses"].append(float(loss))
            if not timed or it >= s.get("warmup", 0):
                out["wall_s"].append(time.perf_counter() - w0)
                out["cpu_s"].append(time.process_time() - c0)
        out["evaluations"] = {}
        for ev in s.get("evaluations", []) if not timed else []:
            pool, tasks = np.load(ev["pool"]), np.load(ev["draws"])
            accuracy = model.metaval_total_accuracies2[ev["inner_steps"] - 1]
            queries = ways * (tasks.shape[2] - ev["shots"])
            correct, w0 = [], time.perf_counter()
            for t in range(len(tasks)):
                feed = dict(zip(eval_ph, batch(np, pool, tasks[t:t + 1], ev["shots"], ways)))
                correct.append(int(round(float(sess.run(accuracy, feed)) * queries)))
            out["evaluations"][ev["cell"]] = {"correct": correct, "queries": queries, "wall_s": time.perf_counter() - w0}
    out["malloc"] = malloc_in_use()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
