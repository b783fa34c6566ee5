"""Run by torchrun in tests/test_distributed.py: a few data-parallel meta-steps of every algorithm and backend
in float64 on a tiny net; rank 0 saves the meta-parameters to the file named by argv[1]."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _tiny import tiny_bn_net, tiny_classification_batch  # noqa: E402
from algorithms import MetaConfig, build_learner  # noqa: E402
from benchmarks.running import distributed  # noqa: E402

CASES = {
    "reptile": dict(algorithm="reptile", inner_steps=3, inner_batch=2, inner_lr=0.01, persist_inner_state=False),
    "reptile-sgd": dict(algorithm="reptile", inner_steps=3, inner_batch=2, inner_lr=0.1, inner_optimizer="sgd"),
    "fomaml": dict(algorithm="fomaml", inner_steps=2, inner_lr=0.3, meta_lr=0.01),
    "maml": dict(algorithm="maml", inner_steps=2, inner_lr=0.3, meta_lr=0.01),
    "imaml": dict(algorithm="imaml", inner_steps=3, inner_lr=0.1, meta_lr=0.01),
    "anil": dict(algorithm="anil", inner_steps=2, inner_lr=0.3, meta_lr=0.01),
}
BACKENDS = ("reference", "batched")
STEPS, TASKS = 3, 5


def run(name: str, backend: str, ranks) -> torch.Tensor:
    torch.set_num_threads(1)
    learner = build_learner(MetaConfig(**CASES[name], backend=backend), tiny_bn_net(ways=3), 100)
    stepper = learner if ranks is None else distributed.DataParallel(learner, ranks)
    for it in range(STEPS):
        stepper.meta_step(tiny_classification_batch(tasks=TASKS, ways=3, shots=2, query=2, seed=it))
    # The convolution's bias (parameter 1) is invisible through the batch norm after it: its true gradient is 0 and
    # Adam normalises the rounding noise it gets instead, so it wanders differently in every run. Left out.
    return torch.cat([p.detach().reshape(-1) for i, p in enumerate(learner.model.parameters()) if i != 1])


if __name__ == "__main__":
    ranks = distributed.init("cpu")
    params = {f"{n}/{b}": run(n, b, ranks) for n in CASES for b in BACKENDS}
    if ranks.leader:
        torch.save(params, sys.argv[1])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's finalization: there gloo's worker threads can still hold tensors and abort
    # the process (SIGABRT, "terminate called without an active exception"; seen in 3 of about 80 runs here,
    # after the work and the save were done). The result is written and the group destroyed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
