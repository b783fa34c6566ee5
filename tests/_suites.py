"""The small sine suite the process-level tests (resume, cluster) run for real; text for a suite file."""
from __future__ import annotations

import json


def sine_defaults(meta_batch: int = 2, learner: str = "") -> str:
    """The ``[defaults]`` table of these suites: sine, 5 shots, 20 evaluation tasks, SGD inner loops."""
    return f"""
[defaults]
dataset = "sine"
split = "maml"
ways = 1
shots = 5
train_query = 5
meta_batch = {meta_batch}
checkpoint_every = 5
eval = {{ num_tasks = 20, query = 20, inner_steps = 3, inner_optimizer = "sgd", inner_lr = 0.01, inner_batch = 0, seed = 100 }}
learner = {{ inner_steps = 1, inner_lr = 0.01, inner_optimizer = "sgd", meta_lr = 0.01{learner} }}
"""


def sine_suite(short_algorithms: list[str], long_iterations: int) -> str:
    """Three groups: ``short-*`` (3 meta-iterations each), ``long-maml`` and ``long2-maml``, the same training
    as long-maml evaluated with 6 fine-tuning steps instead of 3 (one training serves both)."""
    return sine_defaults() + f"""
[[group]]
name = "short-{{algorithm}}"
algorithms = {json.dumps(short_algorithms)}
meta_iterations = 3

[[group]]
name = "long-{{algorithm}}"
algorithms = ["maml"]
meta_iterations = {long_iterations}

[[group]]
name = "long2-{{algorithm}}"
algorithms = ["maml"]
meta_iterations = {long_iterations}
eval = {{ num_tasks = 20, query = 20, inner_steps = 6, inner_optimizer = "sgd", inner_lr = 0.01, inner_batch = 0, seed = 100 }}
"""
