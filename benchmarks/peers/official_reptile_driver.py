"""Time the official Reptile (openai/supervised-reptile) meta-iterations; run INSIDE the peer TensorFlow env.

    <peer-venv>/bin/python official_reptile_driver.py --checkout PATCHED --data TRAIN_DIR --threads 1 --iters 60

Standalone on purpose (the peer environment has TensorFlow, not torch or this project): it imports the
patched official modules, builds their ``OmniglotModel`` (Adam, beta1 = 0) and ``Reptile`` session exactly
as ``run_omniglot.py`` does, reads the training characters with their ``read_dataset`` + ``augment_dataset``,
and times ``Reptile.train_step`` (task sampling included, as the official loop runs it) at the paper's
Omniglot 5-way settings. Prints one JSON object: per-iteration wall and process-CPU seconds.

With ``--tasks N`` it times ``Reptile.evaluate`` instead, as ``run_omniglot.py`` evaluates (5-way 1-shot,
``--eval-batch 5 --eval-iters 50``, non-transductive: each query image predicted beside the support set),
``--repeats`` times N tasks after one warm-up task: seconds per task, one figure per repeat.

With ``--accuracy SETTINGS.json`` it trains for accuracy instead, as ``supervised_reptile.train`` trains
(the meta step annealed linearly over the iterations), at the settings the file gives (the harness,
``official_reptile_accuracy.py``, takes them from this project's suite), then scores each evaluation the file
lists with ``Reptile.evaluate``: the tasks are this project's (a ``.npy`` of [tasks, ways, 1 + shots, 28, 28],
each class's query image first), handed over as classes whose ``sample`` returns them in that order, so
``_split_train_test`` takes the query image as the official code takes its first. The label order and the
fine-tuning minibatches are the official code's own draws (``random``, reseeded from the seed and the cell's
name before each evaluation). Prints the correct count of every task.
``"eval_optimizer": "fresh"`` in the file resets Adam's moments and step count before every evaluation task
(the official ``evaluate`` starts from the training's, and restores them afterwards).
"""
import argparse
import json
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from benchmarks.records.mallocs import malloc_in_use  # noqa: E402  (standard library only: fine in the TF env)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", required=True, help="the patched copy of supervised-reptile")
    ap.add_argument("--data", required=True, help="folder of alphabet/character/*.png (the training characters)")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its default)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=0, help="time this many evaluation tasks per repeat instead")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--accuracy", default=None, help="a settings JSON: train and score for accuracy instead")
    args = ap.parse_args()
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads)
    sys.path.insert(0, args.checkout)
    import tensorflow.compat.v1 as tf  # noqa: E402

    tf.disable_v2_behavior()
    from supervised_reptile.models import OmniglotModel  # noqa: E402
    from supervised_reptile.omniglot import augment_dataset, read_dataset  # noqa: E402
    from supervised_reptile.reptile import Reptile  # noqa: E402

    if args.accuracy:
        return accuracy(args, tf, OmniglotModel, Reptile, augment_dataset, read_dataset)
    random.seed(args.seed)
    tf.set_random_seed(args.seed)
    train_set = list(augment_dataset(read_dataset(args.data))) if not args.tasks else list(read_dataset(args.data))
    model = OmniglotModel(5, learning_rate=0.001)
    config = tf.ConfigProto(intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    wall, cpu = [], []
    with tf.Session(config=config) as sess:
        reptile = Reptile(sess, transductive=False)
        sess.run(tf.global_variables_initializer())

        def evaluate_one():
            reptile.evaluate(train_set, model.input_ph, model.label_ph, model.minimize_op, model.predictions,
                             num_classes=5, num_shots=1, inner_batch_size=5, inner_iters=50, replacement=False)

        if args.tasks:
            evaluate_one()  # warm-up
            for _ in range(args.repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.tasks):
                    evaluate_one()
                wall.append((time.perf_counter() - w0) / args.tasks)
                cpu.append((time.process_time() - c0) / args.tasks)
        for i in range(0 if args.tasks else args.warmup + args.iters):
            w0, c0 = time.perf_counter(), time.process_time()
            # The paper's Omniglot 5-way values (--inner-batch 10 --inner-iters 5 --meta-batch 5 --train-shots 10).
            reptile.train_step(train_set, model.input_ph, model.label_ph, model.minimize_op, num_classes=5,
                               num_shots=10, inner_batch_size=10, inner_iters=5, replacement=False,
                               meta_step_size=1.0 - i / 100000, meta_batch_size=5)
            if i >= args.warmup:
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
    print(json.dumps({"implementation": "official", "tensorflow": tf.__version__, "threads": args.threads,
                      "wall_s": wall, "cpu_s": cpu, "malloc": malloc_in_use(),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


class GivenClass:
    """One class of a given task: ``sample(n)`` returns its first n images in their given order."""

    def __init__(self, images):
        self.images = images

    def sample(self, num_images):
        if num_images > len(self.images):
            raise ValueError(f"asked for {num_images} images of a class that has {len(self.images)}")
        return list(self.images[:num_images])


def accuracy(args, tf, OmniglotModel, Reptile, augment_dataset, read_dataset):
    """Train at the settings of ``args.accuracy`` and print every evaluation's per-task correct counts."""
    import numpy as np

    with open(args.accuracy) as f:
        s = json.load(f)
    random.seed(s["seed"])
    np.random.seed(s["seed"])
    tf.set_random_seed(s["seed"])
    train_set = list(augment_dataset(read_dataset(args.data)))
    model = OmniglotModel(s["ways"], learning_rate=s["inner_lr"])
    config = tf.ConfigProto(intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    steps, evaluations = [], {}
    with tf.Session(config=config) as sess:
        reptile = Reptile(sess, transductive=False)
        scorers = {t: Reptile(sess, transductive=t) for t in (False, True)}
        sess.run(tf.global_variables_initializer())
        fresh = None
        if s.get("eval_optimizer") == "fresh":  # Adam's moments and step count back to their initial values
            trainable = set(tf.trainable_variables())
            fresh = tf.variables_initializer([v for v in tf.global_variables() if v not in trainable])
        for i in range(s["meta_iterations"]):
            w0 = time.perf_counter()
            frac_done = i / s["meta_iterations"]  # supervised_reptile.train's schedule
            reptile.train_step(train_set, model.input_ph, model.label_ph, model.minimize_op, num_classes=s["ways"],
                               num_shots=s["train_shots"], inner_batch_size=s["inner_batch"],
                               inner_iters=s["inner_steps"], replacement=False,
                               meta_step_size=frac_done * s["meta_lr_final"] + (1 - frac_done) * s["meta_lr"],
                               meta_batch_size=s["meta_batch"])
            steps.append(time.perf_counter() - w0)
        for e in s["evaluations"]:
            # The official code draws labels and minibatches from one `random` stream: seeded per evaluation, a
            # cell's scores do not depend on which cells were scored before it (strings seed by their digest).
            random.seed(f"{s['seed']}/{e['name']}")
            tasks = np.load(e["tasks"])
            w0, correct = time.perf_counter(), []
            for task in tasks:
                if fresh is not None:
                    sess.run(fresh)
                correct.append(int(scorers[e["transductive"]].evaluate(
                    [GivenClass(c) for c in task], model.input_ph, model.label_ph, model.minimize_op,
                    model.predictions, num_classes=len(task), num_shots=len(task[0]) - 1,
                    inner_batch_size=e["inner_batch"], inner_iters=e["inner_steps"], replacement=False)))
            evaluations[e["name"]] = {"correct": correct, "ways": int(len(tasks[0])),
                                      "wall_s": time.perf_counter() - w0}
    print(json.dumps({"implementation": "official", "tensorflow": tf.__version__, "threads": args.threads,
                      "step_wall_s": steps, "evaluations": evaluations,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
