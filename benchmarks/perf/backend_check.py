"""Which MAML implementation is correct? Every backend's float64 meta-gradient against the higher reference and
against central finite differences, on a conv net with batch norm, for 1 and 3 inner steps.

    python -m benchmarks.perf.backend_check [--json results/backends/correctness.json]

For each backend of ``maml`` (second order) and ``fomaml``: the relative error ||g - g_ref|| / ||g_ref||
against the reference (higher); for second order also the relative error of the directional derivative
<g, u> against a central difference of the meta-objective along a random direction u (eps = 1e-7,
checked stable against 3e-7: PITFALLS section 7). ``torch.func vmap*`` is the vmapped meta-gradient that
the ``torch.func-vmap`` backend refuses on this net: its error is the reason. ``make perf`` runs this;
``python -m benchmarks.reporting.readme`` turns it, the limit benchmark and the scaling rows into the
"MAML implementations compared" table of docs/performance.md. ``tests/test_libraries.py`` asserts the same bounds.
"""
from __future__ import annotations

import argparse
import copy

import higher
import torch

from algorithms import LEARNERS, MetaConfig, build_learner, task_loss
from algorithms.libraries import LibraryMissing
from algorithms.libraries.func_maml import func_meta_gradient
from benchmarks.records.provenance import measurement, device_name, write_json
from datasets.tasks import TaskBatch

ALPHA = 0.3
EPS = (1e-7, 3e-7)


def problem(seed: int = 4):
    """A float64 conv net with batch norm (batch statistics) and two 3-way 2-shot tasks of random 5x5 images."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2, padding=1),
                              torch.nn.BatchNorm2d(2, track_running_stats=False), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 3, 3)).double()
    g = torch.Generator().manual_seed(seed)

    def part(per):
        x = torch.randn(2, 3 * per, 1, 5, 5, generator=g, dtype=torch.float64)
        return x, torch.arange(3).repeat_interleave(per).expand(2, -1).contiguous()
    return net, TaskBatch(*part(2), *part(2))


def meta_gradient(algorithm: str, backend: str, model, batch, steps: int) -> list[torch.Tensor]:
    config = MetaConfig(algorithm=algorithm, backend=backend, inner_steps=steps, inner_lr=ALPHA, meta_lr=1e-3)
    return build_learner(config, copy.deepcopy(model), 10).meta_gradient(batch)[0]


def objective(model, batch, steps: int) -> float:
    """Second-order MAML's meta-objective: mean query loss after ``steps`` SGD steps of ``ALPHA``."""
    fmodel = higher.monkeypatch(model, copy_initial_weights=False)
    total = 0.0
    for i in range(len(batch)):
        xs, ys, xq, yq = (t[i] for t in batch.tensors())
        fast = list(model.parameters())
        for _ in range(steps):
            g = torch.autograd.grad(task_loss(fmodel(xs, params=fast), ys), fast)
            fast = [w - ALPHA * gi for w, gi in zip(fast, g)]
        total += task_loss(fmodel(xq, params=fast), yq).item() / len(batch)
    return total


def directional_fd(model, batch, steps: int, u, eps: float) -> float:
    """Central difference of ``objective`` along ``u``; the model's weights are restored."""
    base = [p.detach().clone() for p in model.parameters()]
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, b, ui in zip(model.parameters(), base, u):
                p.copy_(b + sign * eps * ui)
        values.append(objective(model, batch, steps))
    with torch.no_grad():
        for p, b in zip(model.parameters(), base):
            p.copy_(b)
    return (values[0] - values[1]) / (2 * eps)


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def check() -> dict:
    model, batch = problem()
    g = torch.Generator().manual_seed(11)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    out: dict = {"backends": {}, "finite_difference": {}}
    for steps in (1, 3):
        fd = [directional_fd(model, batch, steps, u, eps) for eps in EPS]
        out["finite_difference"][str(steps)] = {"estimates": fd, "eps": list(EPS)}
        for algorithm in ("maml", "fomaml"):
            ref = flat(meta_gradient(algorithm, "reference", model, batch, steps))
            contenders = {b: None for b in sorted(LEARNERS[algorithm]) if b != "torch.func-vmap"}
            if algorithm == "maml":
                contenders["torch.func vmap*"] = lambda: func_meta_gradient(model, batch, ALPHA, steps, True)[0]
            for backend, special in contenders.items():
                try:
                    got = flat(special() if special else meta_gradient(algorithm, backend, model, batch, steps))
                except LibraryMissing as e:
                    out["backends"].setdefault(backend, {})[f"{algorithm}-{steps}"] = {"missing": str(e)}
                    continue
                entry = {"vs_reference": ((got - ref).norm() / ref.norm()).item()}
                if algorithm == "maml":
                    directional = float((got * flat(u)).sum())
                    entry["vs_finite_difference"] = abs(directional - fd[0]) / abs(fd[0])
                out["backends"].setdefault(backend, {})[f"{algorithm}-{steps}"] = entry
                print(f"{algorithm} K={steps} {backend:<18} vs reference {entry['vs_reference']:.2e}"
                      + (f"   vs finite differences {entry['vs_finite_difference']:.2e}" if "vs_finite_difference" in entry else ""))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the errors to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny float64 graphs: more threads only fight over the cores
    report = measurement(device_name("cpu"), **check())
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
